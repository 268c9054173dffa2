package process

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/internal/testguard"
	"github.com/graceful-shim/graceful/internal/testtime"
)

// pidNamespace is a new PID namespace (unshare, with its own /proc) whose PID 1 runs a shell
// script: the processes of a container, as the tests and the benchmarks need them.
type pidNamespace struct {
	cmd    *exec.Cmd // unshare
	stdout io.Reader // the script's output
	init   int       // host PID of the namespace's PID 1, once findInit has found it
}

// launchNamespace runs script as PID 1 of a new PID namespace, in cgroup dir as a container's is
// ("": the caller's cgroup). At cleanup it SIGKILLs unshare's process group and the namespace's
// PID 1 (so the kernel kills the rest) and waits for unshare.
func launchNamespace(tb testing.TB, dir, script string) *pidNamespace {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("%s needs root: it creates PID namespaces", tb.Name())
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script)
	if dir != "" {
		// Join the cgroup first, then become unshare: PID 1 and everything it starts is in it.
		cmd = exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec unshare --pid --fork --mount-proc --kill-child sh -c "$2"`, "sh", dir, script)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := testguard.Start(cmd); err != nil {
		tb.Fatal(err)
	}
	p := &pidNamespace{cmd: cmd, stdout: stdout}
	tb.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if p.init > 0 {
			syscall.Kill(p.init, syscall.SIGKILL)
		}
		cmd.Wait()
	})
	return p
}

// findInit finds the namespace's PID 1, unshare's one child (once the script runs).
func (p *pidNamespace) findInit(tb testing.TB) {
	tb.Helper()
	pid := strconv.Itoa(p.cmd.Process.Pid)
	children, err := os.ReadFile(filepath.Join("/proc", pid, "task", pid, "children"))
	if err != nil {
		tb.Fatal(err)
	}
	fields := strings.Fields(string(children))
	if len(fields) != 1 {
		tb.Fatalf("unshare has children %q, want one", children)
	}
	p.init, _ = strconv.Atoi(fields[0])
}

// namespace is a PID namespace whose script's output lines a test waits for.
type namespace struct {
	*pidNamespace
	out  *bufio.Reader
	seen map[string]bool // lines read so far
}

// startNamespace runs script as PID 1 of a new PID namespace (with its own /proc) and waits until
// the script prints "ready".
func startNamespace(t *testing.T, script string) *namespace {
	t.Helper()
	return startNamespaceIn(t, "", script)
}

// startNamespaceIn is startNamespace with the namespace in cgroup dir, as a container's is ("": the
// caller's cgroup).
func startNamespaceIn(t *testing.T, dir, script string) *namespace {
	t.Helper()
	p := launchNamespace(t, dir, script)
	ns := &namespace{pidNamespace: p, out: bufio.NewReader(p.stdout), seen: map[string]bool{}}
	ns.expect(t, "ready")
	ns.findInit(t)
	return ns
}

// expect returns once the namespace has printed a line equal to want, now or earlier (its
// processes print in no fixed order).
func (ns *namespace) expect(t *testing.T, want string) {
	t.Helper()
	ns.expectWithin(t, want, testtime.Scale(10*time.Second))
}

// expectWithin is expect with a wait of up to limit (which the caller scales).
func (ns *namespace) expectWithin(t *testing.T, want string, limit time.Duration) {
	t.Helper()
	if ns.seen[want] {
		return
	}
	done := make(chan error, 1)
	go func() {
		for {
			line, err := ns.out.ReadString('\n')
			if err != nil {
				done <- err
				return
			}
			line = strings.TrimSpace(line)
			ns.seen[line] = true
			if line == want {
				done <- nil
				return
			}
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
	case <-time.After(limit):
		t.Fatalf("timed out after %v waiting for %q", limit, want)
	}
}

func readMarker(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// scope is the scope of the namespace's processes, as a drain of it would use.
func (ns *namespace) scope(t *testing.T) *Scope {
	t.Helper()
	scope, err := ScopeOf(ns.init)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(scope.Close)
	return scope
}

// awaitExeced waits until n members of the namespace run a program named comm (their fork has
// exec'd it): a signal that reaches a fork of a trapping shell before its exec runs the shell's
// inherited handler, and is lost to the program it then becomes.
func (ns *namespace) awaitExeced(t *testing.T, comm string, n int) {
	t.Helper()
	scope := ns.scope(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		members, err := scope.Members()
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, pid := range members {
			if st, err := ReadStatus(pid); err == nil && st.Name == comm {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d members run %s after 10 s", got, n, comm)
		}
		time.Sleep(time.Millisecond) // a poll of /proc: no event tells of an exec here
	}
}
