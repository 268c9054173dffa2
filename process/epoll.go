package process

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// epollPwait2Unsupported is set once the kernel has refused epoll_pwait2 (before Linux 5.11, or a
// seccomp profile).
var epollPwait2Unsupported atomic.Bool

// epollWait is epoll_wait with a timeout to the nanosecond (epoll_pwait2), where epoll_wait
// takes whole milliseconds: a drain that polls cgroup.procs every 0.5 ms would otherwise wake
// every millisecond at best. Older kernels get the timeout rounded up to a millisecond.
func epollWait(ep int, events []unix.EpollEvent, timeout time.Duration) (int, error) {
	if !epollPwait2Unsupported.Load() && len(events) > 0 {
		ts := unix.NsecToTimespec(timeout.Nanoseconds())
		errno := unix.ENOSYS
		var n uintptr
		if !missing(featureEpollPwait2) {
			n, _, errno = unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(ep), uintptr(unsafe.Pointer(&events[0])),
				uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
		}
		// EPERM: a seccomp profile that denies system calls it does not know refuses it too.
		if errno != unix.ENOSYS && errno != unix.EPERM {
			if errno != 0 {
				return 0, errno
			}
			return int(n), nil
		}
		epollPwait2Unsupported.Store(true)
	}
	return unix.EpollWait(ep, events, int((timeout+time.Millisecond-1)/time.Millisecond))
}
