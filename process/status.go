package process

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Dispositions is how a process treats signals, read from /proc/PID/status. Bit N-1 of each mask
// stands for signal N.
type Dispositions struct {
	Caught  uint64 // SigCgt: a handler is installed
	Blocked uint64 // SigBlk: blocked, so it stays pending (a sigwait loop will take it)
	Ignored uint64 // SigIgn: explicitly ignored
}

func bit(sig unix.Signal) uint64 { return 1 << (uint(sig) - 1) }

// Handles reports whether the process will act on sig: it has a handler for it, or blocks it so a
// sigwait loop (as in tini) can take it.
func (d Dispositions) Handles(sig unix.Signal) bool {
	return (d.Caught|d.Blocked)&bit(sig) != 0
}

// Ignores reports whether sig is explicitly ignored and not blocked.
func (d Dispositions) Ignores(sig unix.Signal) bool {
	return d.Ignored&bit(sig) != 0 && d.Blocked&bit(sig) == 0
}

// Status is the part of /proc/PID/status a stop needs.
type Status struct {
	Name string
	// State is the one-letter state: R, S, D, T, Z, ...
	State byte
	// PPid is the parent's PID in the reader's PID namespace.
	PPid int
	// NSpid lists the process's PID in each nested PID namespace, outermost first.
	NSpid []int
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
		case "PPid":
			st.PPid, err = strconv.Atoi(value)
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

// Command returns the process's command line for reports, falling back to its name.
func Command(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err == nil && len(data) > 0 {
		s := strings.TrimRight(strings.ReplaceAll(string(data), "\x00", " "), " ")
		if len(s) > 200 {
			s = s[:200] + "…"
		}
		return s
	}
	data, err = os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return "[" + strings.TrimSpace(string(data)) + "]"
}

// WillHandle reports whether the process pid will act on sig if it is sent now: it has a handler,
// or keeps sig blocked for a sigwait loop (as tini does). Shells block every signal for a moment
// around fork, so a signal seen only as blocked is sampled again a few times before it counts.
func WillHandle(pid int, sig unix.Signal) (bool, error) {
	const samples = 4
	for i := 0; ; i++ {
		st, err := ReadStatus(pid)
		if err != nil {
			return false, err
		}
		if st.Caught&bit(sig) != 0 {
			return true, nil
		}
		if st.Blocked&bit(sig) == 0 {
			return false, nil
		}
		if i == samples-1 {
			return true, nil
		}
		time.Sleep(time.Millisecond)
	}
}
