package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/testguard"
)

// startWithPid starts `sleep 60` as PID pid by setting the kernel's last PID just below it. Other
// processes and threads on the host may take the PID first (a namespace's own `sleep 1`, forked
// right after the write, holds it for a second), so it retries for up to 15 s, pausing a little
// once the PID has been found taken, until the holder is gone; it fails the test if the PID never
// comes round (a thread that keeps it).
func startWithPid(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0o644); err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil { // not testguard.Start: its thread handoff can take the PID
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			return cmd
		}
		cmd.Process.Kill()
		cmd.Wait()
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			time.Sleep(5 * time.Millisecond) // a retry's pause: another task holds the PID now
		}
	}
	t.Fatalf("could not recycle PID %d within 15 s", pid)
	return nil
}

// A handle opened before the PID was recycled never reaches the new process.
func TestHandleNeverSignalsARecycledPid(t *testing.T) {
	old := exec.Command("sleep", "60")
	if err := testguard.Start(old); err != nil {
		t.Fatal(err)
	}
	pid := old.Process.Pid
	h, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	old.Process.Kill()
	old.Wait()

	recycled := startWithPid(t, pid)
	if err := h.Signal(unix.SIGTERM); !errors.Is(err, ErrGone) {
		t.Fatalf("signal through the old handle: %v, want ErrGone", err)
	}
	if err := recycled.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process now holding PID %d was hit: %v", pid, err)
	}
}

// A member enumerated before it exited, whose PID then went to a process outside the container,
// is refused by OpenMember: enumeration and signal never reach the outsider.
func TestOpenMemberRefusesARecycledPid(t *testing.T) {
	ns := startNamespace(t, `sleep 60 & echo $! > /dev/null; echo ready; wait; echo reaped; while :; do sleep 1; done`)
	scope := ns.scope(t)
	members, err := scope.Members()
	if err != nil || len(members) != 1 {
		t.Fatalf("members %v (%v), want the one sleep", members, err)
	}
	pid := members[0]
	syscall.Kill(pid, syscall.SIGKILL)
	ns.expect(t, "reaped") // init has reaped it: the PID is free

	outsider := startWithPid(t, pid)
	if h, err := scope.OpenMember(pid); !errors.Is(err, ErrNotMember) {
		if h != nil {
			h.Close()
		}
		t.Fatalf("OpenMember of a recycled PID: %v, want ErrNotMember", err)
	}
	if err := outsider.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("outsider: %v", err)
	}
}

// A member that has been reaped by the time its membership is checked (as under a parent that
// ignores SIGCHLD, which releases each child as it dies) is gone, not "not a member": a drain
// counts it as exited instead of dropping it from its report. Its PID, recycled meanwhile by a
// process outside the container, does not make it a stranger either.
func TestReapedMemberIsGoneNotAStranger(t *testing.T) {
	marks := t.TempDir()
	ns := startNamespace(t, fmt.Sprintf(`sleep 60 & echo $! > %s/pid
echo ready; wait; echo reaped; while :; do sleep 0.05; done`, marks))
	scope := ns.scope(t)
	nsPid, _ := strconv.Atoi(readMarker(t, filepath.Join(marks, "pid")))
	pid := hostPid(t, scope, nsPid)
	h, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := scope.confirmHandle(h); err != nil {
		t.Fatalf("the live member %d: %v, want a member", pid, err)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	ns.expect(t, "reaped")
	if _, err := scope.confirmHandle(h); !errors.Is(err, ErrGone) {
		t.Fatalf("the reaped member %d: %v, want ErrGone", pid, err)
	}
	stranger := startWithPid(t, pid)
	if _, err := scope.confirmHandle(h); !errors.Is(err, ErrGone) {
		t.Fatalf("the reaped member %d, its PID now %d's outside the container: %v, want ErrGone", pid, stranger.Process.Pid, err)
	}
	// The stranger itself, opened now, is no member.
	if h2, err := scope.OpenMember(pid); !errors.Is(err, ErrNotMember) {
		if h2 != nil {
			h2.Close()
		}
		t.Fatalf("OpenMember of the process outside the container now holding %d: %v, want ErrNotMember", pid, err)
	}
}
