package helper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/procfs"
)

// ptraceSeccompGetFilter is PTRACE_SECCOMP_GET_FILTER (Linux 4.4, CONFIG_CHECKPOINT_RESTORE): a
// tracee's seccomp filters, as classic BPF, by index.
const ptraceSeccompGetFilter = 0x420c

// Seccomp return actions (linux/seccomp.h): SECCOMP_RET_ACTION_FULL masks the action.
const (
	seccompRetActionFull = 0xffff0000
	seccompRetAllow      = 0x7fff0000
	seccompRetLog        = 0x7ffc0000
)

// seccompAllowsAutoreap checks that the seccomp filters of tid, stopped at the entry of its exit
// syscall info, let through the rt_sigaction(SIGCHLD, SIG_IGN) that autoreap would run in its
// place: it evaluates each filter on that call, as the kernel will. A thread without seccomp
// passes after one read of its status. A filter that cannot be read (a tracer without
// CAP_SYS_ADMIN, a kernel without CONFIG_CHECKPOINT_RESTORE) or evaluated fails the check.
func seccompAllowsAutoreap(tid int, info syscallInfo) error {
	st, err := procfs.ReadStatus(tid)
	switch {
	case err != nil:
		return fmt.Errorf("cannot read init's seccomp mode: %w", err)
	case st.Seccomp == 0:
		return nil // no seccomp: nothing to read
	case st.Seccomp == 1:
		return errors.New("init runs in seccomp's strict mode (read, write, exit and sigreturn only)")
	}
	data := seccompData(unix.SYS_RT_SIGACTION, info.Arch, info.IP,
		[6]uint64{uint64(unix.SIGCHLD), info.SP, 0, 8, info.Args[4], info.Args[5]})
	for i := 0; ; i++ {
		prog, err := seccompFilter(tid, i)
		if errors.Is(err, unix.ENOENT) {
			return nil // no filter left
		}
		if err != nil {
			return fmt.Errorf("read seccomp filter %d: %w", i, err)
		}
		ret, err := runSeccompFilter(prog, data)
		if err != nil {
			return fmt.Errorf("seccomp filter %d: %w", i, err)
		}
		if action := ret & seccompRetActionFull; action != seccompRetAllow && action != seccompRetLog {
			return fmt.Errorf("a seccomp filter does not allow rt_sigaction (action %#x)", action)
		}
	}
}

// seccompFilter reads filter index of tid (ENOENT past the last one).
func seccompFilter(tid, index int) ([]unix.SockFilter, error) {
	n, _, errno := unix.Syscall6(unix.SYS_PTRACE, ptraceSeccompGetFilter, uintptr(tid), uintptr(index), 0, 0, 0)
	if errno != 0 {
		return nil, errno
	}
	if n == 0 || n > 4096 { // BPF_MAXINSNS
		return nil, fmt.Errorf("%d instructions", n)
	}
	prog := make([]unix.SockFilter, n)
	if _, _, errno := unix.Syscall6(unix.SYS_PTRACE, ptraceSeccompGetFilter, uintptr(tid), uintptr(index),
		uintptr(unsafe.Pointer(&prog[0])), 0, 0); errno != 0 {
		return nil, errno
	}
	return prog, nil
}

// seccompDataLen is sizeof(struct seccomp_data): nr, arch, instruction_pointer, args[6].
const seccompDataLen = 64

// seccompData lays out struct seccomp_data in native byte order.
func seccompData(nr uint64, arch uint32, ip uint64, args [6]uint64) []byte {
	b := make([]byte, seccompDataLen)
	binary.NativeEndian.PutUint32(b[0:], uint32(nr))
	binary.NativeEndian.PutUint32(b[4:], arch)
	binary.NativeEndian.PutUint64(b[8:], ip)
	for i, a := range args {
		binary.NativeEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

// Classic BPF opcode fields (linux/filter.h).
const (
	bpfClass = 0x07
	bpfLD    = 0x00
	bpfLDX   = 0x01
	bpfST    = 0x02
	bpfSTX   = 0x03
	bpfALU   = 0x04
	bpfJMP   = 0x05
	bpfRET   = 0x06
	bpfMISC  = 0x07

	bpfMode = 0xe0
	bpfIMM  = 0x00
	bpfABS  = 0x20
	bpfMEM  = 0x60
	bpfLEN  = 0x80

	bpfSize = 0x18
	bpfW    = 0x00

	bpfOp  = 0xf0
	bpfSrc = 0x08
	bpfX   = 0x08

	bpfRval = 0x18
	bpfA    = 0x10
)

// runSeccompFilter runs a classic BPF seccomp filter on data and returns its verdict, as the
// kernel's seccomp would: the instructions a seccomp filter may hold (the kernel checks them at
// load), loads of 32-bit words of data only.
func runSeccompFilter(prog []unix.SockFilter, data []byte) (uint32, error) {
	var a, x uint32
	var mem [16]uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		k := in.K
		switch in.Code & bpfClass {
		case bpfLD, bpfLDX:
			var v uint32
			switch in.Code & bpfMode {
			case bpfIMM:
				v = k
			case bpfLEN:
				v = seccompDataLen
			case bpfMEM:
				if k >= 16 {
					return 0, fmt.Errorf("instruction %d: memory slot %d", pc, k)
				}
				v = mem[k]
			case bpfABS:
				if in.Code&bpfSize != bpfW || k%4 != 0 || int(k)+4 > len(data) {
					return 0, fmt.Errorf("instruction %d: load at %d", pc, k)
				}
				v = binary.NativeEndian.Uint32(data[k:])
			default:
				return 0, fmt.Errorf("instruction %d: opcode %#x", pc, in.Code)
			}
			if in.Code&bpfClass == bpfLD {
				a = v
			} else {
				x = v
			}
		case bpfST, bpfSTX:
			if k >= 16 {
				return 0, fmt.Errorf("instruction %d: memory slot %d", pc, k)
			}
			if in.Code&bpfClass == bpfST {
				mem[k] = a
			} else {
				mem[k] = x
			}
		case bpfALU:
			operand := k
			if in.Code&bpfSrc == bpfX {
				operand = x
			}
			switch in.Code & bpfOp {
			case 0x00:
				a += operand
			case 0x10:
				a -= operand
			case 0x20:
				a *= operand
			case 0x30:
				if operand == 0 {
					return 0, nil // the kernel's verdict for a division by zero: kill
				}
				a /= operand
			case 0x40:
				a |= operand
			case 0x50:
				a &= operand
			case 0x60:
				a <<= operand & 31
			case 0x70:
				a >>= operand & 31
			case 0x80:
				a = -a
			case 0x90:
				if operand == 0 {
					return 0, nil
				}
				a %= operand
			case 0xa0:
				a ^= operand
			default:
				return 0, fmt.Errorf("instruction %d: opcode %#x", pc, in.Code)
			}
		case bpfJMP:
			operand := k
			if in.Code&bpfSrc == bpfX {
				operand = x
			}
			var taken bool
			switch in.Code & bpfOp {
			case 0x00: // JA
				pc += int(k)
				continue
			case 0x10:
				taken = a == operand
			case 0x20:
				taken = a > operand
			case 0x30:
				taken = a >= operand
			case 0x40:
				taken = a&operand != 0
			default:
				return 0, fmt.Errorf("instruction %d: opcode %#x", pc, in.Code)
			}
			if taken {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case bpfRET:
			switch in.Code & bpfRval {
			case 0x00:
				return k, nil
			case bpfA:
				return a, nil
			default:
				return 0, fmt.Errorf("instruction %d: opcode %#x", pc, in.Code)
			}
		case bpfMISC:
			if in.Code&0xf8 == 0x80 { // TXA
				a = x
			} else { // TAX
				x = a
			}
		}
	}
	return 0, errors.New("the filter ran off its end")
}
