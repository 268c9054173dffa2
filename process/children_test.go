package process

import (
	"os"
	"os/exec"
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
