package process

// sigwaitSyscalls are the numbers /proc/PID/syscall gives rt_sigtimedwait: x86-64's, and for a
// 32-bit (compat) task i386's and its time64 variant's (both unused on x86-64).
var sigwaitSyscalls = []int{128, 177, 421}
