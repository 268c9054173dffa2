package process

// sigwaitSyscalls are the numbers /proc/PID/syscall gives rt_sigtimedwait on arm64.
var sigwaitSyscalls = []int{137}
