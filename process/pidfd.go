package process

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Handle is a pidfd: a reference to one process that stays valid, and never refers to another
// process, even after the PID is recycled.
type Handle struct {
	// Pid is the process's PID in the shim's PID namespace.
	Pid int
	fd  int
}

// ErrGone reports that the process has exited (and, for Open, may already have been reaped).
var ErrGone = errors.New("process is gone")

// Open returns a pidfd for pid. It returns ErrGone when no such process exists.
func Open(pid int) (*Handle, error) {
	fd, err := pidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, ErrGone
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &Handle{Pid: pid, fd: fd}, nil
}

// pidfdOpen is pidfd_open(2) (a test injects its failures here).
var pidfdOpen = func(pid, flags int) (int, error) {
	if missing(featurePidfdOpen) {
		return -1, unix.ENOSYS
	}
	return unix.PidfdOpen(pid, flags)
}

// Signal delivers sig to the process the handle refers to. It returns ErrGone when that process has
// been reaped.
func (h *Handle) Signal(sig unix.Signal) error {
	if err := unix.PidfdSendSignal(h.fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return ErrGone
		}
		return fmt.Errorf("pidfd_send_signal %d %s: %w", h.Pid, unix.SignalName(sig), err)
	}
	return nil
}

// Exited reports, without blocking, whether the process has exited (it may still be a zombie).
func (h *Handle) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// WaitExit waits up to timeout for the process to exit, and reports whether it has.
func (h *Handle) WaitExit(timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0)/time.Millisecond))
		switch {
		case err == nil:
			return n > 0
		case err != unix.EINTR || !time.Now().Before(deadline):
			return false
		}
	}
}

// Close releases the pidfd.
func (h *Handle) Close() error {
	if h.fd < 0 {
		return nil
	}
	err := unix.Close(h.fd)
	h.fd = -1
	return err
}

// Fd returns the pidfd, for polling: it becomes readable when the process exits.
func (h *Handle) Fd() int { return h.fd }
