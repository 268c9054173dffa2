package helper

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// kernelSigactionSize is struct kernel_sigaction on x86_64: handler, flags, restorer, mask.
const kernelSigactionSize = 32

// autoreap turns a thread stopped at the entry of its process's last exit syscall into one that
// first ignores SIGCHLD and then makes the same exit syscall: rt_sigaction(SIGCHLD, SIG_IGN) is
// run in its place (its argument written over the top of the stack, restored afterwards), and at
// that syscall's exit the registers are put back with the instruction pointer on the syscall
// instruction again, so that the original exit syscall runs next. The process never returns to
// user space after that syscall, so ignoring SIGCHLD changes nothing it can observe; what it
// changes is that a child that dies from then on releases itself instead of staying a zombie
// until the exiting init reaps it, one at a time, in the kernel's zap.
type autoreap struct {
	tid   int
	saved unix.PtraceRegs
	stack []byte // the bytes the sigaction argument overwrote
	// restored: finish put the registers back, with the exit syscall next.
	restored bool
}

// autoreapImplemented: this architecture can rewrite init's exit syscall.
const autoreapImplemented = true

// canAutoreap reports whether a syscall stop is of a process this tracer can rewrite: a 64-bit
// x86 one (a 32-bit process on the same kernel uses other syscall numbers and registers).
func canAutoreap(info syscallInfo) bool { return info.Arch == unix.AUDIT_ARCH_X86_64 }

// isExitSyscall reports whether a syscall-entry stop is an exit syscall this architecture can
// rewrite (a 64-bit exit or exit_group).
func isExitSyscall(info syscallInfo) bool {
	return info.Arch == unix.AUDIT_ARCH_X86_64 && (info.Nr == unix.SYS_EXIT_GROUP || info.Nr == unix.SYS_EXIT)
}

// beginAutoreap replaces the exit syscall tid is entering by rt_sigaction(SIGCHLD, SIG_IGN). The
// caller resumes tid with PTRACE_SYSCALL and calls finish at the next syscall stop.
func beginAutoreap(tid int) (*autoreap, error) {
	a := &autoreap{tid: tid, stack: make([]byte, kernelSigactionSize)}
	if err := unix.PtraceGetRegs(tid, &a.saved); err != nil {
		return nil, fmt.Errorf("get registers: %w", err)
	}
	if _, err := unix.PtracePeekData(tid, uintptr(a.saved.Rsp), a.stack); err != nil {
		return nil, fmt.Errorf("read the stack: %w", err)
	}
	act := make([]byte, kernelSigactionSize)
	binary.LittleEndian.PutUint64(act, 1) // sa_handler = SIG_IGN; flags, restorer, mask 0
	if _, err := unix.PtracePokeData(tid, uintptr(a.saved.Rsp), act); err != nil {
		return nil, fmt.Errorf("write the sigaction: %w", err)
	}
	regs := a.saved
	regs.Orig_rax = unix.SYS_RT_SIGACTION
	regs.Rdi = uint64(unix.SIGCHLD)
	regs.Rsi = a.saved.Rsp
	regs.Rdx = 0
	regs.R10 = 8 // sizeof(sigset_t) in the kernel
	if err := unix.PtraceSetRegs(tid, &regs); err != nil {
		unix.PtracePokeData(tid, uintptr(a.saved.Rsp), a.stack)
		return nil, fmt.Errorf("set registers: %w", err)
	}
	return a, nil
}

// finish runs at the exit stop of the injected rt_sigaction: it restores the stack and the
// registers, with the instruction pointer back on the 2-byte syscall instruction and the exit
// syscall's number in rax, and returns rt_sigaction's result.
func (a *autoreap) finish() error {
	var regs unix.PtraceRegs
	var result error
	if err := unix.PtraceGetRegs(a.tid, &regs); err == nil && int64(regs.Rax) < 0 {
		result = fmt.Errorf("rt_sigaction: %w", unix.Errno(-int64(regs.Rax)))
	}
	unix.PtracePokeData(a.tid, uintptr(a.saved.Rsp), a.stack)
	restart := a.saved
	restart.Rip -= 2
	restart.Rax = a.saved.Orig_rax
	if err := unix.PtraceSetRegs(a.tid, &restart); err != nil {
		return fmt.Errorf("restore registers: %w", err)
	}
	a.restored = true
	return result
}
