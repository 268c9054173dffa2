package process

import "golang.org/x/sys/unix"

// DrainDescriptors is how many descriptors a process that drains should have room for at once
// without its descriptor table growing: a drain holds a pidfd per detailed or tracked member
// (MaxDetailed in a drain that signals at once) besides what the process has open already.
const DrainDescriptors = 1024

// ReserveDescriptors grows the calling process's descriptor table to hold n descriptors, so that
// opening them later does not grow it. The kernel grows a table shared by several threads (any Go
// program's) only after an RCU grace period, which takes milliseconds: a drain that opened a few
// hundred pidfds in a fresh shim paid one such wait per doubling, on its critical path. Call it
// early, aside: the caller waits for that grace period once. It does nothing when the descriptor
// limit is below n.
func ReserveDescriptors(n int) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	// The lowest free descriptor from n-1 up: the kernel sizes the table for it at once, and no
	// descriptor in use is touched.
	if high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n-1); err == nil {
		unix.Close(high)
	}
}
