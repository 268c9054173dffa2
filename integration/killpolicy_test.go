package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// Tests of the Kill decision table and the stop plan (shim/plan.go) through a real containerd.

// An explicit init-first for an init without a TERM handler (a shell as PID 1) must not end in the
// kernel's zap: init would be SIGKILLed while traced, and a task with a fatal signal pending is
// not held at its exit. The plan runs children-first instead, so the child's handler runs.
func TestExplicitInitFirstWithoutHandlerDrainsChildren(t *testing.T) {
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: childTraps("child") + "echo ready\n" + loop,
		Annotations: orderAnnotation("init-first")})
	waitTrapped(t, c, "child")
	stopExpect(t, c, 15*time.Second, exitSIGKILL)
	if got := c.Marker("child"); got != "clean" {
		t.Fatalf("child marker %q: its TERM handler did not run (init zapped it)", got)
	}
}

// During an init-first stop, a repeated stop signal reaches init, as it does with the stock shim:
// an init that exits only on the second TERM exits, and its child is still drained.
func TestRepeatedStopSignalReachesInitFirstInit(t *testing.T) {
	script := childTraps("child") + `n=0
trap 'n=$((n+1)); echo "term $n"; [ $n -ge 2 ] && exit 0' TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: orderAnnotation("init-first")})
	waitTrapped(t, c, "child")
	start := time.Now()
	kill(t, c, syscall.SIGTERM)
	if err := c.Output.WaitLine("term 1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	kill(t, c, syscall.SIGTERM)
	if err := c.Output.WaitLine("term 2", 10*time.Second); err != nil {
		t.Fatalf("the second TERM never reached init: %v", err)
	}
	_, st, err := c.WaitExit(start, 15*time.Second)
	if err != nil || st.ExitCode() != exitOK {
		t.Fatalf("exit %d (%v), want 0", st.ExitCode(), err)
	}
	if got := c.Marker("child"); got != "clean" {
		t.Fatalf("child marker %q: not drained", got)
	}
}

// Concurrent stop signals (a kubelet retry plus a docker stop, say) start exactly one stop: each
// member is signalled once, and the shim keeps no descriptor of a losing stop (pidfds, an epoll
// fd and a proc-connector socket each).
func TestConcurrentStopSignalsStartOneStop(t *testing.T) {
	script := `sh -c 'trap "echo term >> /out/terms; sleep 0.3; exit 0" TERM; echo trapped child; while :; do sleep 0.05; done' &
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: orderAnnotation("children-first")})
	waitTrapped(t, c, "child")
	shim := shimOf(t, c)
	before := fdCount(t, shim)
	start := time.Now()
	killConcurrently(t, c, 20, -1)
	_, st, err := c.WaitExit(start, 20*time.Second)
	if err != nil || st.ExitCode() != exitSIGKILL {
		t.Fatalf("exit %d (%v), want 137 (a shell PID 1 gets SIGKILL after the drain)", st.ExitCode(), err)
	}
	if terms := strings.Count(c.Marker("terms"), "term"); terms != 1 {
		t.Errorf("the child was sent TERM %d times, want once", terms)
	}
	// The stop closes what it holds just after init is signalled: wait for that, bounded.
	if after := countDownTo(before, 10*time.Second, func() int { return fdCount(t, shim) }); after > before {
		t.Fatalf("the shim holds %d descriptors after the stop, %d before it: a losing stop leaked\n%s", after, before, fdList(shim))
	}
}

// A SIGKILL among concurrent stop signals ends the container at once, whichever stop it meets
// (starting, planned or draining), though the child ignores TERM and the grace is a minute.
func TestSigkillAmongConcurrentStopSignalsWins(t *testing.T) {
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: ignoringChild + "echo ready\n" + loop,
		Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "60s"}})
	waitTrapped(t, c, "ignoring")
	start := time.Now()
	killConcurrently(t, c, 20, 10)
	took, st, err := c.WaitExit(start, 30*time.Second)
	if err != nil || st.ExitCode() != exitSIGKILL {
		t.Fatalf("exit %d (%v) after %v, want 137 well before the 60s grace", st.ExitCode(), err, took)
	}
}

// A stop that falls back to forwarding (the tracer cannot attach: init is already traced) still
// publishes its report, saying why.
func TestForwardedStopPublishesItsReport(t *testing.T) {
	reports := subscribeReports(t)
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: "trap 'exit 0' TERM\necho ready\n" + loop})
	releaseAtExit := traceFromOutside(t, int(c.Task.Pid()))
	start := time.Now()
	kill(t, c, syscall.SIGTERM)
	if r := reports.NextReport(t, c.ID); r.Order != "" || !r.TracerFailed || !strings.Contains(strings.Join(r.Notes, "; "), "cannot hold init's exit") {
		t.Fatalf("report %+v: want a forwarded stop saying the tracer could not attach", r)
	}
	releaseAtExit()
	if _, st, err := c.WaitExit(start, 15*time.Second); err != nil || st.ExitCode() != exitOK {
		t.Fatalf("exit %d (%v), want 0: init got the forwarded TERM", st.ExitCode(), err)
	}
}

// traceFromOutside attaches a tracer that is not the stop's own (the shim binary's hold-init,
// started by the test) to pid. It returns the function that waits for pid to be held in its exit
// and then releases it.
func traceFromOutside(t *testing.T, pid int) (releaseAtExit func()) {
	t.Helper()
	h, err := process.Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// The child gets a copy: an os.File of h's own descriptor would close it a second time when
	// it is collected, by then perhaps another test's pidfd (seen as POLLNVAL, "exited").
	fd, err := unix.FcntlInt(uintptr(h.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	defer pidfd.Close()
	cmd := exec.Command(filepath.Join(theStack.Dir, "bin", "containerd-shim-graceful-v2"), "hold-init", strconv.Itoa(pid))
	cmd.ExtraFiles = []*os.File{pidfd}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := stack.NewOutput()
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			stdin.Close()
			cmd.Wait()
		})
	}
	t.Cleanup(func() { cmd.Process.Kill(); release() })
	if err := out.WaitLine(helper.Attached, 10*time.Second); err != nil {
		t.Fatalf("outside tracer: %v\n%s", err, out)
	}
	return func() {
		t.Helper()
		if err := out.WaitLine(helper.Exiting, 10*time.Second); err != nil {
			t.Errorf("init never began to exit: %v\n%s", err, out)
		}
		release()
	}
}

// kill sends sig to the container's init through containerd.
func kill(t *testing.T, c *stack.Container, sig syscall.Signal) {
	t.Helper()
	if err := c.Task.Kill(stackContext(), sig); err != nil {
		t.Fatalf("kill %s: %v", unix.SignalName(sig), err)
	}
}

// killConcurrently sends n Kills at once through containerd: SIGTERM, except SIGKILL at index
// sigkillAt (none when negative).
func killConcurrently(t *testing.T, c *stack.Container, n, sigkillAt int) {
	t.Helper()
	var wg sync.WaitGroup
	gate := make(chan struct{})
	errs := make(chan error, n)
	for i := range n {
		sig := syscall.SIGTERM
		if i == sigkillAt {
			sig = syscall.SIGKILL
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			if err := c.Task.Kill(stackContext(), sig); err != nil && sig == syscall.SIGKILL {
				errs <- err
			}
		}()
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("SIGKILL: %v", err)
	}
}

// shimOf is the PID of the shim that runs c.
func shimOf(t *testing.T, c *stack.Container) int {
	t.Helper()
	st, err := process.ReadStatus(int(c.Task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	return st.PPid
}

func fdCount(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("descriptors of the shim %d: %v", pid, err)
	}
	return len(entries)
}

// countDownTo polls count (every 20 ms) until it is at most want or timeout passes, and returns
// its last value: a shim closes what a stop held at its own pace.
func countDownTo(want int, timeout time.Duration, count func() int) int {
	deadline := time.Now().Add(timeout)
	n := count()
	for n > want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = count()
	}
	return n
}

// pidfdCount counts pid's pidfds.
func pidfdCount(t *testing.T, pid int) int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("descriptors of the shim %d: %v", pid, err)
	}
	n := 0
	for _, e := range entries {
		if target, _ := os.Readlink(filepath.Join(dir, e.Name())); target == "anon_inode:[pidfd]" {
			n++
		}
	}
	return n
}

// fdList describes pid's descriptors, for a failure message.
func fdList(pid int) string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, _ := os.ReadDir(dir)
	var b strings.Builder
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name() + " -> " + target)
		if target == "anon_inode:[pidfd]" {
			// Which process the pidfd refers to (-1: it has exited).
			info, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + e.Name())
			for _, line := range strings.Split(string(info), "\n") {
				if strings.HasPrefix(line, "Pid:") {
					b.WriteString(" (" + strings.Join(strings.Fields(line), " ") + ")")
				}
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// The stop signal a client recorded for the container (ctr run and nerdctl set the label
// io.containerd.image.config.stop-signal from the image's STOPSIGNAL) drains with no annotation.
// Without the label, or with an explicit stop-signals annotation, that signal is not a stop
// signal: it reaches init only (a JVM's QUIT thread dump must not start a drain).
func TestRecordedStopSignalDrains(t *testing.T) {
	label := map[string]string{"io.containerd.image.config.stop-signal": "SIGQUIT"}
	quitChild := `sh -c 'trap "echo quit > /out/child-quit" QUIT; trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; echo trapped child; ` + loop + `' &
`
	t.Run("label", func(t *testing.T) {
		c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Labels: label,
			Script: quitChild + "trap 'exit 0' QUIT\necho ready\n" + loop})
		waitTrapped(t, c, "child")
		_, st, err := c.Stop(context.Background(), syscall.SIGQUIT, 15*time.Second)
		if err != nil || st.ExitCode() != exitOK {
			t.Fatalf("exit %d (%v), want 0", st.ExitCode(), err)
		}
		if got := c.Marker("child"); got != "clean" {
			t.Fatalf("QUIT did not drain: child marker %q", got)
		}
		if got := c.Marker("child-quit"); got != "" {
			t.Fatalf("the child got QUIT: the drain signal is TERM")
		}
	})
	for name, spec := range map[string]stack.Spec{
		"no-label":             {},
		"annotation-overrides": {Labels: label, Annotations: map[string]string{"io.containerd.graceful.v2.stop-signals": "SIGTERM"}},
	} {
		t.Run(name, func(t *testing.T) {
			spec.Runtime = stack.GracefulRuntime
			spec.Script = quitChild + "trap 'echo init-quit' QUIT\ntrap 'exit 0' TERM\necho ready\n" + loop
			c := start(t, spec)
			waitTrapped(t, c, "child")
			kill(t, c, syscall.SIGQUIT)
			if err := c.Output.WaitLine("init-quit", 10*time.Second); err != nil {
				t.Fatalf("QUIT did not reach init: %v", err)
			}
			// A QUIT at the child would run its trap before the TERM's (lower number).
			stopExpect(t, c, 15*time.Second, exitOK)
			if got := c.Marker("child-quit"); got != "" {
				t.Fatalf("QUIT reached the child: it started a drain")
			}
			if got := c.Marker("child"); got != "clean" {
				t.Fatalf("the TERM stop did not drain: child marker %q", got)
			}
		})
	}
}

// Concurrent stop signals, then a SIGKILL while the stop drains (a 30 s grace, a child that
// outlives its TERM): the container ends at once, and the shim, which runs on until the task is
// deleted, keeps no descriptor of the stop (no pidfd of a member, init or the tracer), in either
// order.
func TestSigkillDuringConcurrentStopsLeaksNothing(t *testing.T) {
	script := `sh -c 'trap "echo got >> /out/stubborn" TERM; echo trapped stubborn; ` + loop + `' &` + "\n"
	for i := 0; i < 20; i++ {
		script += `sh -c 'trap "" TERM; ` + loop + `' &` + "\n"
	}
	script += `trap "exit 0" TERM
echo ready
` + loop
	for _, order := range []string{"init-first", "children-first"} {
		t.Run(order, func(t *testing.T) {
			annotations := orderAnnotation(order)
			annotations["io.containerd.graceful.v2.grace-period"] = "30s"
			c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: annotations})
			waitTrapped(t, c, "stubborn")
			shim := shimOf(t, c)
			before := pidfdCount(t, shim)
			start := time.Now()
			killConcurrently(t, c, 20, -1)
			waitMarker(t, c, "stubborn", "got") // the drain is under way
			kill(t, c, syscall.SIGKILL)
			took, st, err := c.WaitExit(start, 20*time.Second)
			if err != nil || took > 15*time.Second {
				t.Fatalf("exit %d (%v) after %v: want an end at once, well before the 30 s grace", st.ExitCode(), err, took)
			}
			// The stop closes what it holds once it has been aborted; the pidfds of the runc
			// commands that the runc service ran (the forwarded SIGKILL's) are closed by the
			// collection that ends the shim's collector pause, 10 s after the stop: wait for
			// that, bounded (well below the collector's own two minutes).
			if after := countDownTo(before, 20*time.Second, func() int { return pidfdCount(t, shim) }); after > before {
				t.Fatalf("the shim holds %d pidfds after the stop, %d before it: the stop leaked\n%s", after, before, fdList(shim))
			}
		})
	}
}
