package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// writeFile writes a file in a test's temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// holdAlive opens a pidfd on pid (a sentinel) at once, and returns a check, for the end of the
// test, that fails unless that very process is still alive: a sentinel can trap catchable
// signals only, so a SIGKILL that reached it shows only here.
func holdAlive(t *testing.T, what string, pid int) func() {
	t.Helper()
	h, err := process.Open(pid)
	if err != nil {
		t.Fatalf("pidfd of %s %d: %v", what, pid, err)
	}
	t.Cleanup(func() { h.Close() })
	return func() {
		t.Helper()
		if h.Exited() {
			t.Errorf("%s %d died (SIGKILLed?) during the test", what, pid)
		}
	}
}

// execTrapping starts `ctr task exec` in c: a shell that on TERM takes 0.2s, writes "clean" to
// /out/<name> and exits 0. It returns once the trap is set; the exec's output is returned.
func execTrapping(t *testing.T, c *stack.Container, name string) *stack.Output {
	t.Helper()
	cmd := exec.Command(filepath.Join(theStack.ContainerdBin, "ctr"), "--address", theStack.Address, "--namespace", stack.Namespace,
		"task", "exec", "--exec-id", name, c.ID, "sh", "-c",
		`trap "echo `+name+`-usr1" USR1; trap "sleep 0.2; echo clean > /out/`+name+`; exit 0" TERM; echo `+name+`-ready; `+loop)
	out := stack.NewOutput()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	if err := out.WaitLine(name+"-ready", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return out
}

// skipUnlessOptedIn skips a test that needs what a plain test run lacks (dockerd, a kubelet,
// critest) unless the environment variable env is 1, as the make target target sets it.
func skipUnlessOptedIn(t *testing.T, env, target, needs string) {
	t.Helper()
	if os.Getenv(env) != "1" {
		t.Skipf("set %s=1 (%s) to %s", env, target, needs)
	}
}

// freePort returns a TCP port free on the host's loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
