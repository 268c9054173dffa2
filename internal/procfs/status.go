// Package procfs reads the /proc files that both the drain (package process) and the helper
// programs (package helper) need: a task's status, its stat fields and a namespace's inode.
package procfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dispositions is how a process treats signals, read from /proc/PID/status. Bit N-1 of each mask
// stands for signal N.
type Dispositions struct {
	Caught  uint64 // SigCgt: a handler is installed
	Blocked uint64 // SigBlk: blocked, so it stays pending (a sigwait loop will take it)
	Ignored uint64 // SigIgn: explicitly ignored
}

// Bit is sig's bit in a /proc signal mask.
func Bit(sig unix.Signal) uint64 { return 1 << (uint(sig) - 1) }

// Handles reports whether the process will act on sig: it has a handler for it, or blocks it so a
// sigwait loop (as in tini) can take it.
func (d Dispositions) Handles(sig unix.Signal) bool {
	return (d.Caught|d.Blocked)&Bit(sig) != 0
}

// Ignores reports whether sig is explicitly ignored and not blocked.
func (d Dispositions) Ignores(sig unix.Signal) bool {
	return d.Ignored&Bit(sig) != 0 && d.Blocked&Bit(sig) == 0
}

// Status is the part of /proc/PID/status a stop needs.
type Status struct {
	Name string
	// State is the one-letter state: R, S, D, T, Z, ...
	State byte
	// Tgid is the thread group (process) a task belongs to; PPid is the parent's PID, both in the
	// reader's PID namespace.
	Tgid, PPid int
	// TracerPid is the PID of the task's tracer, 0 when it is not traced.
	TracerPid int
	// Pending are the signals pending for this task alone (SigPnd; a thread's, when read through
	// its thread id).
	Pending uint64
	// NSpid lists the process's PID in each nested PID namespace, outermost first.
	NSpid []int
	// Seccomp is the task's seccomp mode: 0 none, 1 strict, 2 filter.
	Seccomp int
	Dispositions
}

// NamespaceInit reports whether the process is PID 1 of its innermost PID namespace, where the
// kernel drops signals that have no handler.
func (s Status) NamespaceInit() bool {
	return len(s.NSpid) > 1 && s.NSpid[len(s.NSpid)-1] == 1
}

// ReadStatus parses /proc/PID/status.
func ReadStatus(pid int) (Status, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Status{}, fmt.Errorf("read status of %d: %w", pid, err)
	}
	return parseStatus(data)
}

// ReadStatusFile parses a status file given by path (/proc/thread-self/status).
func ReadStatusFile(path string) (Status, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Status{}, fmt.Errorf("read %s: %w", path, err)
	}
	return parseStatus(data)
}

func parseStatus(data []byte) (Status, error) {
	var st Status
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		var err error
		switch key {
		case "Name":
			st.Name = value
		case "State":
			if value != "" {
				st.State = value[0]
			}
		case "Tgid":
			st.Tgid, err = strconv.Atoi(value)
		case "PPid":
			st.PPid, err = strconv.Atoi(value)
		case "TracerPid":
			st.TracerPid, err = strconv.Atoi(value)
		case "SigPnd":
			st.Pending, err = strconv.ParseUint(value, 16, 64)
		case "Seccomp":
			st.Seccomp, err = strconv.Atoi(value)
		case "NSpid":
			for _, f := range strings.Fields(value) {
				n, perr := strconv.Atoi(f)
				if perr != nil {
					return st, fmt.Errorf("parse NSpid %q: %w", value, perr)
				}
				st.NSpid = append(st.NSpid, n)
			}
		case "SigCgt":
			st.Caught, err = strconv.ParseUint(value, 16, 64)
		case "SigBlk":
			st.Blocked, err = strconv.ParseUint(value, 16, 64)
		case "SigIgn":
			st.Ignored, err = strconv.ParseUint(value, 16, 64)
		}
		if err != nil {
			return st, fmt.Errorf("parse %s %q: %w", key, value, err)
		}
	}
	return st, sc.Err()
}
