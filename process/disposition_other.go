//go:build !amd64 && !arm64

package process

// sigwaitSyscalls is empty where the system call numbers are not known here: a sigwait init is
// then read as blocked or default, as /proc shows it.
var sigwaitSyscalls []int
