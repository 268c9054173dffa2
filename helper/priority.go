package helper

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// helperNice is the nice value of the thread that does a helper's work (the tracer's ptrace
// loop, the signaller's kill(-1)). Both sit on a stop's critical path while the shim prepares the
// drain and thousands of processes exit on the same cores: at the default priority each ptrace
// stop of an exiting init waited up to a millisecond or more for a CPU.
const helperNice = -10

// raiseHelperPriority locks the calling goroutine to its thread and raises that thread's priority
// to helperNice (where the caller may: root, or CAP_SYS_NICE). The thread is never unlocked: the
// helper's process ends with it.
func raiseHelperPriority() {
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), helperNice)
}
