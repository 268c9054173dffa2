package process

// What the shim's choice of signalling at once rests on (shim/plan.go decideSignalling): whether
// the scope allows it, its size and the host's.

import (
	"fmt"
	"strconv"
	"strings"
)

// CanSignalAtOnce reports whether a drain of the scope can signal its members at once, with a
// Signaller: the scope is a PID namespace of its own, with a cgroup to list its members from.
func (s *Scope) CanSignalAtOnce() bool {
	return s.Kind == ByPIDNamespace && s.cgroupDir != ""
}

// Size is the number of tasks (threads included) the pids controller counts in the container's
// cgroup, else the number of processes its cgroup.procs lists (ok false when neither can be
// read). The counter is one integer however many tasks: reading cgroup.procs costs about 2 µs a
// process under load.
func (s *Scope) Size() (int, bool) {
	if n, ok := s.taskCount(); ok {
		return n, true
	}
	pids, ok := s.cgroupList()
	return len(pids), ok
}

// taskCount is the pids controller's count of the tasks in the container's cgroup and below it
// (ok false without a pids controller): one integer, however many tasks.
func (s *Scope) taskCount() (int, bool) {
	if s.pidsCounter == "" {
		return 0, false
	}
	var buf [32]byte
	data, err := readProcFile(s.pidsCounter, buf[:])
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return n, err == nil
}

// HostTasks is the number of tasks (threads) on the host, from /proc/loadavg's fourth field
// (running/total).
func HostTasks() (int, error) {
	var buf [128]byte
	data, err := readProcFile("/proc/loadavg", buf[:])
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(data))
	if len(fields) < 4 {
		return 0, fmt.Errorf("/proc/loadavg: %q", data)
	}
	_, total, ok := strings.Cut(fields[3], "/")
	if !ok {
		return 0, fmt.Errorf("/proc/loadavg: %q", data)
	}
	return strconv.Atoi(total)
}
