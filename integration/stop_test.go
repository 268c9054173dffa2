package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// childTraps is a child that takes 300ms to clean up on TERM, then writes /out/<name>. It prints
// "trapped <name>" once its trap is set.
func childTraps(name string) string {
	return `sh -c 'trap "sleep 0.3; echo clean > /out/` + name + `; exit 0" TERM; echo trapped ` + name + `; while :; do sleep 0.05; done' &
`
}

// ignoringChild is a child that ignores TERM; it prints "trapped ignoring" once it does.
const ignoringChild = `sh -c 'trap "" TERM; echo trapped ignoring; ` + loop + `' &
`

// waitTrapped waits until the container printed "trapped <name>" for every name.
func waitTrapped(t *testing.T, c *stack.Container, names ...string) {
	t.Helper()
	for _, name := range names {
		if err := c.Output.WaitLine("trapped "+name, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// The seed case: init traps TERM and exits; its child traps TERM. The stock shim's stop zaps the
// child mid-cleanup; graceful lets its handler finish.
func TestSeedCaseChildHandlerRuns(t *testing.T) {
	script := seedScript
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			c := start(t, stack.Spec{Runtime: runtime, Script: script})
			waitTrapped(t, c, "child")
			took := stopExpect(t, c, 15*time.Second, exitOK)
			got := c.Marker("child")
			t.Logf("%s: stop took %v, child marker %q", short(runtime), took, got)
			if runtime == stack.StockRuntime && got != "" {
				t.Fatalf("stock shim: child handler completed (%q), expected the zap to kill it", got)
			}
			if runtime == stack.GracefulRuntime && got != "clean" {
				t.Fatalf("graceful: child handler did not complete")
			}
		})
	}
}

// loop keeps a shell busy in a way that lets its traps run promptly.
const loop = `while :; do sleep 0.05; done`

// The seed case: init traps TERM and exits 0; its child traps TERM and needs 0.3s.
var seedScript = childTraps("child") + `trap "exit 0" TERM
echo ready
` + loop

// run.sh: init has no TERM trap and waits for its child, which traps TERM and needs 0.3s.
var runShScript = childTraps("child") + `echo ready
wait`

// run.sh: init has no TERM trap and waits for its child, which does. PID 1 drops the stock shim's
// TERM, so that stop hangs; graceful drains the child and the container stops in about the child's
// own shutdown time.
func TestRunShStopsInChildsShutdownTime(t *testing.T) {
	script := runShScript
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			c := start(t, stack.Spec{Runtime: runtime, Script: script})
			waitTrapped(t, c, "child")
			if runtime == stack.StockRuntime {
				took, _, err := c.Stop(context.Background(), syscall.SIGTERM, 2*time.Second)
				if !errors.Is(err, stack.ErrStillRunning) {
					t.Fatalf("stock shim: want init to drop TERM and keep running, got exit after %v (%v)", took, err)
				}
				if _, _, err := c.Stop(context.Background(), syscall.SIGKILL, 10*time.Second); err != nil {
					t.Fatal(err)
				}
				if got := c.Marker("child"); got != "" {
					t.Fatalf("stock shim: child cleaned up (%q) although only SIGKILL reached it", got)
				}
				return
			}
			took := stop(t, c, 15*time.Second)
			t.Logf("graceful: stop took %v", took)
			if got := c.Marker("child"); got != "clean" {
				t.Fatalf("child handler did not complete")
			}
			if took > 3*time.Second {
				t.Fatalf("stop took %v: want about the child's 0.3s shutdown, far below the 10s grace", took)
			}
		})
	}
}

// Grandchildren, one in init's process group and one in a session of its own, get TERM too.
func TestGrandchildrenGetTerm(t *testing.T) {
	trapped := func(name string) string {
		return `trap \"echo ` + name + ` > /out/` + name + `; exit 0\" TERM; echo trapped ` + name + `; ` + loop
	}
	script := `sh -c "sh -c '` + trapped("group") + `' & setsid sh -c '` + trapped("session") + `' & ` + trapped("child") + `" &
trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
	waitTrapped(t, c, "child", "group", "session")
	stopExpect(t, c, 15*time.Second, exitOK)
	for _, name := range []string{"child", "group", "session"} {
		if got := c.Marker(name); got != name {
			t.Errorf("%s did not get TERM", name)
		}
	}
}

// A child that ignores TERM is SIGKILLed when the grace period ends: G <= stop < G + 2s, whichever
// way the grace period is set.
func TestTermIgnoringChildKilledAtGrace(t *testing.T) {
	script := ignoringChild + `trap "exit 0" TERM
echo ready
` + loop
	cases := []struct {
		name        string
		grace       time.Duration
		annotations map[string]string
		options     any
		defaults    string
	}{
		{name: "annotation", grace: time.Second, annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "1s"}},
		{name: "options-body", grace: 1500 * time.Millisecond, options: &runtimeoptions.Options{ConfigBody: []byte(`grace_period = "1500ms"`)}},
		{name: "options-path", grace: 1200 * time.Millisecond, options: &runtimeoptions.Options{ConfigPath: writeFile(t, "grace.toml", `grace_period = "1200ms"`)}},
		{name: "defaults-file", grace: 800 * time.Millisecond, defaults: `grace_period = "800ms"`},
		{name: "annotation-beats-options", grace: time.Second, annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "1s"},
			options: &runtimeoptions.Options{ConfigBody: []byte(`grace_period = "5s"`)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.defaults != "" {
				if err := os.WriteFile(defaultsFile, []byte(tc.defaults), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Remove(defaultsFile) })
			}
			c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: tc.annotations, RuntimeOptions: tc.options})
			waitTrapped(t, c, "ignoring")
			took := stopExpect(t, c, tc.grace+10*time.Second, exitOK)
			t.Logf("grace %v: stop took %v", tc.grace, took)
			// 2 s of margin on a loaded machine, still well below the 5 s and 10 s grace
			// periods that a wrong source would give.
			if took < tc.grace || took >= tc.grace+2*time.Second {
				t.Fatalf("stop took %v, want between %v and %v", took, tc.grace, tc.grace+2*time.Second)
			}
		})
	}
}

// SIGHUP (any signal that is not a stop signal) reaches init only, as with the stock shim.
func TestSighupReachesInitOnly(t *testing.T) {
	script := `sh -c 'trap "echo hup > /out/child-hup" HUP; trap "exit 0" TERM; echo trapped child; ` + loop + `' &
trap "echo init-hup" HUP
trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
	waitTrapped(t, c, "child")
	ctx := namespaces.WithNamespace(context.Background(), stack.Namespace)
	if err := c.Task.Kill(ctx, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := c.Output.WaitLine("init-hup", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := c.Task.Status(ctx)
	if err != nil || st.Status != "running" {
		t.Fatalf("after SIGHUP the container is %v (%v), want running", st.Status, err)
	}
	// A HUP pending at the child would be handled before the TERM of the stop (lower number).
	stopExpect(t, c, 15*time.Second, exitOK)
	if got := c.Marker("child-hup"); got != "" {
		t.Fatalf("SIGHUP reached the child")
	}
}

// A process started with ctr task exec is drained with the rest; a Kill on an exec id still goes
// to that exec only.
func TestExecProcessIsDrained(t *testing.T) {
	script := `trap "echo init-usr1" USR1
trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
	execOut := execTrapping(t, c, "worker")
	if _, err := theStack.Ctr("task", "kill", "--exec-id", "worker", "--signal", "SIGUSR1", c.ID); err != nil {
		t.Fatal(err)
	}
	if err := execOut.WaitLine("worker-usr1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	stopExpect(t, c, 15*time.Second, exitOK)
	if got := c.Marker("worker"); got != "clean" {
		t.Fatalf("exec process was not drained: marker %q; its output:\n%s", got, execOut.String())
	}
	if strings.Contains(c.Output.String(), "init-usr1") {
		t.Fatalf("SIGUSR1 for the exec reached init")
	}
}

// A Go program (whose runtime installs a SIGTERM handler) and a Python program with a
// signal.signal handler both see TERM and finish their cleanup.
func TestGoAndPythonHandlersSeeTerm(t *testing.T) {
	python := `import signal, sys, time
def term(*_):
    time.sleep(0.1)
    open("/out/python", "w").write("SIGTERM\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready python", flush=True)
while True:
    time.sleep(1)
`
	script := `/bin/gohandler go &
/usr/bin/python3 -c '` + python + `' &
trap "exit 0" TERM
echo ready
` + loop
	ro := []string{"rbind", "ro"}
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Mounts: []specs.Mount{
		{Destination: "/usr", Type: "bind", Source: "/usr", Options: ro},
		{Destination: "/lib", Type: "bind", Source: "/lib", Options: ro},
		{Destination: "/lib64", Type: "bind", Source: "/lib64", Options: ro},
	}})
	for _, line := range []string{"ready go", "ready python"} {
		if err := c.Output.WaitLine(line, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	stopExpect(t, c, 15*time.Second, exitOK)
	for _, name := range []string{"go", "python"} {
		if got := c.Marker(name); !strings.Contains(got, "terminated") && got != "SIGTERM" {
			t.Errorf("%s handler did not finish: marker %q", name, got)
		}
	}
}

// Bad configuration fails Create with an error naming the field and the accepted form.
func TestBadConfigurationFailsCreate(t *testing.T) {
	cases := []struct {
		name        string
		annotations map[string]string
		options     any
		want        []string
	}{
		{name: "grace-not-duration", annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "ten seconds"},
			want: []string{"io.containerd.graceful.v2.grace-period", "Go duration"}},
		{name: "grace-too-long", annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "2h"},
			want: []string{"io.containerd.graceful.v2.grace-period", "between 0s and 1h0m0s"}},
		{name: "bad-signal", annotations: map[string]string{"io.containerd.graceful.v2.stop-signals": "SIGTERM,SIGFOO"},
			want: []string{"io.containerd.graceful.v2.stop-signals", "SIGFOO"}},
		{name: "unknown-key", options: &runtimeoptions.Options{ConfigBody: []byte("grace = \"1s\"")},
			want: []string{`unknown key "grace"`, "grace_period"}},
		{name: "bad-toml", options: &runtimeoptions.Options{ConfigBody: []byte("grace_period = ")},
			want: []string{"not valid TOML"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("bad-%s-%d", tc.name, seq.Add(1))
			c, err := theStack.Create(context.Background(), stack.Spec{ID: id, Runtime: stack.GracefulRuntime, Script: "true",
				Annotations: tc.annotations, RuntimeOptions: tc.options})
			if err == nil {
				c.Delete()
				t.Fatal("Create succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			t.Logf("error: %v", err)
		})
	}
}

// The shim is a child subreaper: a process orphaned in a host-PID container is reparented to it,
// and reaped by it when it exits. The orphan waits on a fifo until the test writes to it, so that
// the test sees it alive under the shim first, then lets it exit and sees it reaped.
func TestOrphansAreReaped(t *testing.T) {
	script := `mkfifo /out/gate
sh -c 'sh -c "read line < /out/gate; exit 3" & echo orphan $!'
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, HostPID: true})
	var orphan int
	for _, line := range strings.Split(c.Output.String(), "\n") {
		fmt.Sscanf(line, "orphan %d", &orphan)
	}
	if orphan == 0 {
		t.Fatalf("no orphan pid in %q", c.Output.String())
	}
	// The orphan's parent exited before "ready", and the orphan waits at the gate: alive.
	h, err := process.Open(orphan)
	if err != nil {
		t.Fatalf("orphan %d: %v, want it alive until the gate opens", orphan, err)
	}
	defer h.Close()
	initStatus, err := process.ReadStatus(int(c.Task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	shimPid := initStatus.PPid
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", shimPid)); !strings.Contains(string(cmdline), "containerd-shim-graceful-v2") {
		t.Fatalf("init's parent %d is %q, want the graceful shim", shimPid, cmdline)
	}
	st, err := process.ReadStatus(orphan)
	if err != nil || st.PPid != shimPid || st.State == 'Z' || h.Exited() {
		t.Fatalf("orphan %d: state %c parent %d (%v), want alive under the shim %d", orphan, st.State, st.PPid, err, shimPid)
	}

	openGate(t, filepath.Join(c.OutDir, "gate"))
	fds := []unix.PollFd{{Fd: int32(h.Fd()), Events: unix.POLLIN}}
	deadline := time.Now().Add(10 * time.Second)
	for !h.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d did not exit once the gate opened", orphan)
		}
		unix.Poll(fds, 100)
	}
	// No event reports a reap to anyone but the reaper: poll for it, against a generous deadline.
	deadline = time.Now().Add(10 * time.Second)
	for !reaped(t, h) {
		if time.Now().After(deadline) {
			st, _ := process.ReadStatus(orphan)
			t.Fatalf("orphan %d exited but was not reaped in 10s: state %c parent %d", orphan, st.State, st.PPid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if zombies := stack.Children(shimPid, stack.Zombie); len(zombies) > 0 {
		t.Fatalf("zombies under the shim: %v", zombies)
	}
	// A host-PID init without a trap is not PID 1 of a namespace: TERM's default action ends it.
	stopExpect(t, c, 15*time.Second, exitSIGTERM)
}

// A container in the host's PID namespace, init without a trap: auto starts the tracer, then
// finds init will not take TERM as PID 1 of its own namespace would and stops children-first
// without it. That tracer was ended aside while init was signalled, and a TERM that came while
// it exited was lost (the kernel's implicit detach drops a signal being delivered): init ran on
// until the client's SIGKILL, once in 30 to 60 stops. Init must get its TERM every time.
func TestHostPIDInitGetsItsStopSignalEveryTime(t *testing.T) {
	const stops = 60
	for i := 0; i < stops; i++ {
		c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: "echo ready\n" + loop, HostPID: true})
		took, st, err := c.Stop(stackContext(), syscall.SIGTERM, 10*time.Second)
		if err != nil {
			t.Fatalf("stop %d of %d: %v (init never got its TERM)", i+1, stops, err)
		}
		if st.ExitCode() != exitSIGTERM {
			t.Fatalf("stop %d: exit code %d, want %d", i+1, st.ExitCode(), exitSIGTERM)
		}
		if took > 5*time.Second {
			t.Fatalf("stop %d took %v", i+1, took)
		}
	}
}

// openGate writes a line to the fifo at path, which a process of the container reads: it waits up
// to 10s for that reader to open the fifo.
func openGate(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_, err = f.WriteString("open\n")
			f.Close()
			if err != nil {
				t.Fatalf("write the gate: %v", err)
			}
			return
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("open the gate: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // no reader yet
	}
}

// reaped reports whether the process of the pidfd has been reaped, not just exited: its pidfd's
// fdinfo then shows Pid -1 (a zombie still shows its PID). Unlike /proc/PID, this cannot be
// fooled by the PID's reuse.
func reaped(t *testing.T, h *process.Handle) bool {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", h.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			return strings.TrimSpace(v) == "-1"
		}
	}
	t.Fatalf("no Pid in the fdinfo of pidfd %d: %q", h.Fd(), data)
	return false
}
