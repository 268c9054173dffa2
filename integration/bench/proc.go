package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat (100 on every Linux
// architecture Go supports).
const clockTicks = 100

// shimOf returns the shim process of a container: the parent of its init (runc exits after the
// start, and the shim is the child subreaper that inherits init).
func shimOf(initPid int) (int, error) {
	st, err := process.ReadStatus(initPid)
	if err != nil {
		return 0, err
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.PPid))
	if err != nil {
		return 0, fmt.Errorf("parent %d of init %d: %w", st.PPid, initPid, err)
	}
	if !bytes.Contains(cmdline, []byte("containerd-shim")) {
		return 0, fmt.Errorf("parent %d of init %d is not a shim: %q", st.PPid, initPid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	}
	return st.PPid, nil
}

// statusValue returns the first number of a /proc/PID/status line.
func statusValue(data []byte, key string) (int64, bool) {
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		return n, err == nil
	}
	return 0, false
}

// vmRSS returns a process's resident set size in bytes.
func vmRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	kb, ok := statusValue(data, "VmRSS")
	if !ok {
		return 0, fmt.Errorf("no VmRSS for %d", pid)
	}
	return kb * 1024, nil
}

// usage is what a process has consumed so far.
type usage struct {
	switches int64 // voluntary + nonvoluntary context switches, summed over its threads
	ticks    int64 // utime + stime, in clock ticks
	cpuNs    int64 // time on CPU from /proc/PID/task/*/schedstat, summed over its threads
	threads  int
}

// readUsage reads a process's context switches and CPU time.
func readUsage(pid int) (usage, error) {
	var u usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return u, fmt.Errorf("bad utime/stime in /proc/%d/stat", pid)
	}
	u.ticks = utime + stime
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return u, err
	}
	for _, t := range tasks {
		dir := filepath.Join(fmt.Sprintf("/proc/%d/task", pid), t.Name())
		data, err := os.ReadFile(filepath.Join(dir, "status"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		v, _ := statusValue(data, "voluntary_ctxt_switches")
		nv, _ := statusValue(data, "nonvoluntary_ctxt_switches")
		u.switches += v + nv
		u.threads++
		if sched, err := os.ReadFile(filepath.Join(dir, "schedstat")); err == nil {
			if f := strings.Fields(string(sched)); len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				u.cpuNs += ns
			}
		}
	}
	return u, nil
}

// pidNamespace returns the inode of a process's PID namespace.
func pidNamespace(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// countInNamespace counts the processes whose PID namespace has inode ns.
func countInNamespace(ns uint64) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	var st unix.Stat_t
	for _, e := range entries {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		if unix.Stat("/proc/"+name+"/ns/pid", &st) == nil && st.Ino == ns {
			n++
		}
	}
	return n
}

// pidsLimit returns the smallest pids.max on the path from a process's pids cgroup up to the root
// ("max" when none is set), and the cgroup it read.
func pidsLimit(pid int) (limit string, cgroup string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", "", err
	}
	var root, path string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "pids" { // cgroup v1 (or hybrid) pids controller
				root, path = "/sys/fs/cgroup/pids", parts[2]
			}
		}
		if parts[0] == "0" && parts[1] == "" && root == "" {
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil { // pure cgroup v2
				root, path = "/sys/fs/cgroup", parts[2]
			}
		}
	}
	if root == "" {
		return "", "", fmt.Errorf("no pids cgroup for %d in %q", pid, data)
	}
	limit = "max"
	min := int64(-1)
	for p := path; ; p = filepath.Dir(p) {
		if v, err := os.ReadFile(filepath.Join(root, p, "pids.max")); err == nil {
			s := strings.TrimSpace(string(v))
			if n, err := strconv.ParseInt(s, 10, 64); err == nil && (min < 0 || n < min) {
				min, limit = n, s
			}
		}
		if p == "/" || p == "." || p == "" {
			break
		}
	}
	return limit, filepath.Join(root, path), nil
}
