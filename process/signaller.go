package process

import (
	"golang.org/x/sys/unix"
)

// A Signaller signals every process of a container's PID namespace at once: it is a process
// inside that namespace (started there by the shim, see SignallerMain) that calls kill(-1), which
// the kernel delivers to every process of the namespace and of the namespaces nested in it, except
// the namespace's PID 1 and the caller. That is exactly the drain's members, in one system call
// instead of a pidfd and two signals per member, and with no PID-reuse window: a process outside
// the namespace cannot be reached from inside it.
type Signaller interface {
	// SignalAll sends sig, then SIGCONT unless sig is SIGKILL or SIGCONT, to every process of the
	// namespace but its PID 1 and the signaller.
	SignalAll(sig unix.Signal) (SignalWindow, error)
	// Pid is the signaller's PID in the caller's namespace: it is inside the container's
	// namespace, but never a member.
	Pid() int
}

// SignalWindow is when a SignalAll ran, in CLOCK_MONOTONIC nanoseconds (the clock of the fork
// watcher's timestamps): a process created before From got the signal, one created after To did
// not, and one created in between may have.
type SignalWindow struct{ From, To int64 }

// monotonicNow is CLOCK_MONOTONIC in nanoseconds.
func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
