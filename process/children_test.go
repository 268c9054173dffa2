package process

import (
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// OldestChild finds the first-started child of a process, whichever thread forked it.
func TestOldestChildIsTheFirstStarted(t *testing.T) {
	var cmds []*exec.Cmd
	for range 3 {
		cmd := exec.Command("sleep", "100")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		cmds = append(cmds, cmd)
		time.Sleep(20 * time.Millisecond) // distinct start ticks (10 ms each), not synchronisation
	}
	got, err := OldestChild(os.Getpid())
	if err != nil || got != cmds[0].Process.Pid {
		t.Fatalf("OldestChild = %d (%v), want the first child %d", got, err, cmds[0].Process.Pid)
	}
}

// WaitExited returns true once the process exits, and false when the cancel descriptor fires.
func TestWaitExitedEndsOnExitOrCancel(t *testing.T) {
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	h, err := Open(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.Write([]byte{1})
	w.Close()
	if exited, err := h.WaitExited(int(r.Fd())); err != nil || exited {
		t.Fatalf("cancelled wait: exited %v (%v), want false", exited, err)
	}
	cmd.Process.Kill()
	never, _, _ := os.Pipe()
	defer never.Close()
	if exited, err := h.WaitExited(int(never.Fd())); err != nil || !exited {
		t.Fatalf("wait: exited %v (%v), want true", exited, err)
	}
}

// Children started in the same clock tick are told apart by process group: the one leading its own
// group (graceful-init's main process) counts as the older, whatever the order of the children's
// list. graceful-init once watched an orphan adopted in its main process's first tick instead, and
// drained the container when the orphan exited.
func TestOldestChildTieGoesToTheGroupLeader(t *testing.T) {
	runtime.LockOSThread() // both children in one thread's list, the other one first
	defer runtime.UnlockOSThread()
	for try := 0; try < 50; try++ {
		other := exec.Command("sleep", "100")
		leader := exec.Command("sleep", "100")
		leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		if err := leader.Start(); err != nil {
			t.Fatal(err)
		}
		a, _, _ := startAndGroup(other.Process.Pid)
		b, _, _ := startAndGroup(leader.Process.Pid)
		got, err := OldestChild(os.Getpid())
		for _, c := range []*exec.Cmd{other, leader} {
			c.Process.Kill()
			c.Wait()
		}
		if a != b {
			continue // not a tie: try again
		}
		if err != nil || got != leader.Process.Pid {
			t.Fatalf("OldestChild = %d (%v), want the group leader %d, not %d, started in the same tick", got, err, leader.Process.Pid, other.Process.Pid)
		}
		return
	}
	t.Fatal("no two children started in the same clock tick in 50 tries")
}
