package process

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// startTime is when pid started, in clock ticks after boot (stat field 22).
func startTime(pid int) (uint64, bool) {
	start, _, ok := startAndGroup(pid)
	return start, ok
}

// OldestChild returns the child of pid that started first, or 0 when it has none. Start times are
// in clock ticks (10 ms): of children started in the same tick, one that leads its own process
// group counts as the older, then the lower PID. So graceful-init's main process, which it starts
// in a group of its own, is told from an orphan adopted in the same tick, which comes from the
// main process's group (the main process's shell forked a background child and exited at once).
func OldestChild(pid int) (int, error) {
	children, err := childrenOf(pid)
	if err != nil {
		return 0, err
	}
	var oldest child
	for _, n := range children {
		if start, leads, ok := startAndGroup(n); ok {
			if c := (child{n, start, leads}); oldest.pid == 0 || c.olderThan(oldest) {
				oldest = c
			}
		}
	}
	return oldest.pid, nil
}

// child is a child process as OldestChild compares them.
type child struct {
	pid   int
	start uint64 // clock ticks after boot
	leads bool   // it leads its process group
}

// olderThan orders by start tick, then group leaders first, then by PID.
func (c child) olderThan(o child) bool {
	switch {
	case c.start != o.start:
		return c.start < o.start
	case c.leads != o.leads:
		return c.leads
	}
	return c.pid < o.pid
}

// startAndGroup is when pid started, in clock ticks after boot (stat field 22), and whether it
// leads its process group (field 5).
func startAndGroup(pid int) (start uint64, leads bool, ok bool) {
	fields, ok := procfs.StatFields(fmt.Sprintf("/proc/%d/stat", pid))
	if !ok || len(fields) < 20 {
		return 0, false, false
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	return start, fields[2] == strconv.Itoa(pid), err == nil
}

// WaitExited blocks until the process exits (true) or the descriptor cancel becomes readable
// (false).
func (h *Handle) WaitExited(cancel int) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}, {Fd: int32(cancel), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll the pidfd of %d: %w", h.Pid, err)
		}
		return fds[0].Revents != 0, nil
	}
}
