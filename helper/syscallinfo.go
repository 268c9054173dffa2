package helper

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// syscallInfo is the start of struct ptrace_syscall_info with its entry member (Op is one of
// unix.PTRACE_SYSCALL_INFO_*): for an exit stop Nr holds the return value instead.
type syscallInfo struct {
	Op       uint8
	_        uint8
	_        uint16
	Arch     uint32
	IP       uint64
	SP       uint64
	Nr       uint64
	Args     [6]uint64
	reserved [2]uint64 // room for the seccomp member's ret_data
}

// getSyscallInfo is PTRACE_GET_SYSCALL_INFO (Linux 5.3) for a thread in a syscall stop.
func getSyscallInfo(tid int) (syscallInfo, error) {
	var info syscallInfo
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GET_SYSCALL_INFO, uintptr(tid),
		unsafe.Sizeof(info), uintptr(unsafe.Pointer(&info)), 0, 0)
	if errno != 0 {
		return info, errno
	}
	return info, nil
}
