package process

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// epollSeccompEnv makes the test binary a process whose seccomp filter refuses epoll_pwait2 with
// EPERM, as container profiles that deny the system calls they do not know do, and which reports
// what epollWait makes of it (see epollUnderSeccomp).
const epollSeccompEnv = "GRACEFUL_TEST_EPOLL_SECCOMP"

// An epoll_pwait2 refused with EPERM (a seccomp profile) falls back to epoll_wait, as ENOSYS does:
// a drain polling through it would otherwise spin, every wait failing at once, until its grace.
func TestEpollWaitFallsBackWhenSeccompRefusesPwait2(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run", "^$")
	cmd.Env = append(os.Environ(), epollSeccompEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "waited 3 times, fell back" {
		t.Fatalf("under a filter refusing epoll_pwait2 (%v): %s", err, out)
	}
}

// epollUnderSeccomp installs, on every thread, a seccomp filter that refuses epoll_pwait2 with
// EPERM, then waits three times 5 ms on an empty epoll set and prints what happened; it returns
// the exit status.
func epollUnderSeccomp() int {
	const (
		auditArchX8664   = 0xc000003e
		seccompRetErrno  = 0x00050000
		seccompRetAllow  = 0x7fff0000
		seccompSetFilter = 1
		seccompTsync     = 1
	)
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 4}, // arch
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: auditArchX8664},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_EPOLL_PWAIT2},
		{Code: unix.BPF_RET | unix.BPF_K, K: seccompRetErrno | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: seccompRetAllow},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		os.Stdout.WriteString("no_new_privs: " + err.Error() + "\n")
		return 1
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, seccompSetFilter, seccompTsync, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		os.Stdout.WriteString("seccomp: " + errno.Error() + "\n")
		return 1
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		os.Stdout.WriteString("epoll_create1: " + err.Error() + "\n")
		return 1
	}
	events := make([]unix.EpollEvent, 1)
	for i := 0; i < 3; i++ {
		start := time.Now()
		if _, err := epollWait(ep, events, 5*time.Millisecond); err != nil {
			os.Stdout.WriteString("epollWait: " + err.Error() + "\n")
			return 1
		}
		if waited := time.Since(start); waited < 5*time.Millisecond {
			os.Stdout.WriteString("epollWait returned after " + waited.String() + ", before its 5 ms\n")
			return 1
		}
	}
	if !epollPwait2Unsupported.Load() {
		os.Stdout.WriteString("waited 3 times, but through epoll_pwait2\n")
		return 1
	}
	os.Stdout.WriteString("waited 3 times, fell back\n")
	return 0
}
