package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
	"golang.org/x/sys/unix"
)

func orderAnnotation(order string) map[string]string {
	if order == "" {
		return nil
	}
	return map[string]string{"io.containerd.graceful.v2.stop-order": order}
}

// supervisorScript is a supervisor init: it respawns its worker whenever the worker dies, and on
// TERM stops the worker itself (which traps TERM) and exits 0.
const supervisorScript = `worker() { sh -c 'trap "echo worker >> /out/order; exit 0" TERM; echo trapped worker; while :; do sleep 0.05; done' & wpid=$!; }
trap 'echo init >> /out/order; stopping=1; kill -TERM $wpid; wait $wpid; exit 0' TERM
worker
echo ready
while :; do
  wait $wpid
  [ -n "$stopping" ] && exit 0
  echo respawn >> /out/respawns
  worker
done`

// tiniLikeScript is a tini-like init: it forwards TERM to its direct child only and exits 0 when
// that child exits; the grandchild traps TERM and needs 0.2s.
const tiniLikeScript = `sh -c 'sh -c "trap \"sleep 0.2; echo clean > /out/grandchild; exit 0\" TERM; echo trapped grandchild; while :; do sleep 0.05; done" & trap "exit 0" TERM; echo trapped child; while :; do sleep 0.05; done' &
cpid=$!
trap 'kill -TERM $cpid' TERM
echo ready
wait $cpid
wait $cpid
exit 0`

// A supervisor init respawns its worker whenever the worker dies, and on TERM stops the worker
// itself. Under auto (the default: init handles TERM, so init-first) init hears of the stop first,
// nothing respawns and the stop takes about the supervisor's own time. children-first TERMs the
// worker behind the supervisor's back, before init hears of the stop: the supervisor then sees its
// worker die and respawns it if it gets there before its own TERM (a race it usually wins here,
// logged, not asserted); the order of the TERMs is asserted.
func TestSupervisorIsNotFooledUnderAuto(t *testing.T) {
	script := supervisorScript
	for _, order := range []string{"", "children-first"} {
		name := order
		if name == "" {
			name = "auto"
		}
		t.Run(name, func(t *testing.T) {
			c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: orderAnnotation(order)})
			waitTrapped(t, c, "worker")
			var took time.Duration
			if order == "" {
				took = stopExpect(t, c, 15*time.Second, exitOK)
			} else {
				// The supervisor may be busy respawning when its own TERM comes, and a shell can
				// then miss it (a signal race in ash's wait): finish as an orchestrator would.
				var err error
				took, _, err = c.Stop(context.Background(), syscall.SIGTERM, 5*time.Second)
				if errors.Is(err, stack.ErrStillRunning) {
					t.Logf("children-first: the supervisor missed its TERM while respawning; SIGKILL")
					_, _, err = c.Stop(context.Background(), syscall.SIGKILL, 10*time.Second)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			respawns := strings.Count(c.Marker("respawns"), "respawn")
			first := strings.SplitN(c.Marker("order"), "\n", 2)[0]
			t.Logf("%s: stop took %v, %d respawns, first TERM to %s", name, took, respawns, first)
			if order == "" {
				if respawns != 0 || first != "init" {
					t.Fatalf("auto: %d respawns, first TERM to %q: want 0 respawns and init told first", respawns, first)
				}
				if took > 2*time.Second {
					t.Fatalf("auto: stop took %v, want about the supervisor's own time", took)
				}
			}
			if order == "children-first" && first != "worker" {
				t.Fatalf("children-first: first TERM to %q, want the worker, behind the supervisor's back", first)
			}
		})
	}
}

// A tini-like init forwards TERM to its direct child only and exits when that child exits: the
// grandchild still gets TERM (its handler runs) before anything is SIGKILLed.
func TestTiniLikeInitGrandchildGetsTerm(t *testing.T) {
	script := tiniLikeScript
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
	waitTrapped(t, c, "child", "grandchild")
	stopExpect(t, c, 15*time.Second, exitOK)
	if got := c.Marker("grandchild"); got != "clean" {
		t.Fatalf("grandchild's handler did not complete")
	}
}

// A multithreaded init (a Go program) exits on TERM at once while its child still cleans up: every
// thread is held until the child is done.
func TestMultithreadedInitIsHeld(t *testing.T) {
	child := `trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; echo trapped child; while :; do sleep 0.05; done`
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Args: []string{"/bin/goinit", child}})
	waitTrapped(t, c, "child")
	if threads := countThreads(t, int(c.Task.Pid())); threads < 2 {
		t.Fatalf("init has %d threads, want a multithreaded init", threads)
	}
	stopExpect(t, c, 15*time.Second, exitOK)
	if got := c.Marker("child"); got != "clean" {
		t.Fatalf("child's handler did not complete after the multithreaded init exited")
	}
}

// SIGKILL during a drain ends the container at once, whichever the stop order: under init-first
// (init traps TERM) init is held in its exit when the SIGKILL arrives. The child traps TERM and
// runs on: its record of the drain's TERM shows the drain under way, and it is still there, before
// the SIGKILL; init's exit code tells who ended init (0: its own trap, then held; 137: SIGKILL).
func TestSigkillDuringDrainStopsAtOnce(t *testing.T) {
	script := `sh -c 'trap "echo got > /out/stubborn" TERM; echo trapped stubborn; ` + loop + `' &
echo pid $!
trap "exit 0" TERM
echo ready
` + loop
	for _, order := range []string{"init-first", "children-first"} {
		t.Run(order, func(t *testing.T) {
			annotations := orderAnnotation(order)
			annotations["io.containerd.graceful.v2.grace-period"] = "30s"
			reports := subscribeReports(t)
			c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: annotations})
			waitTrapped(t, c, "stubborn")
			initPid := int(c.Task.Pid())
			childPid := sentinelPid(t, c)
			child := openPid(t, "the stubborn child", childPid)
			initH := openPid(t, "init", initPid)
			ctx := context.Background()
			if err := c.Task.Kill(namespaces.WithNamespace(ctx, stack.Namespace), syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if order == "init-first" {
				waitHeld(t, initPid)
			}
			waitMarker(t, c, "stubborn", "got")
			// The drain has TERMed the child, which runs on for its 30s grace period.
			select {
			case st := <-c.Exit:
				t.Fatalf("container exited (code %d) during a 30s drain", st.ExitCode())
			default:
			}
			if child.Exited() {
				// Say whether init was still held (a drain that ended early releases it to the zap).
				held := "held"
				if why := notHeld(initPid); why != "" {
					held = "not held: " + why
				}
				st, stErr := process.ReadStatus(childPid)
				fds := []unix.PollFd{{Fd: int32(child.Fd()), Events: unix.POLLIN}}
				unix.Poll(fds, 0)
				held += fmt.Sprintf("; child %d state %c (%v), pidfd revents %#x", childPid, st.State, stErr, fds[0].Revents)
				c.Stop(ctx, syscall.SIGKILL, 10*time.Second)
				t.Fatalf("the stubborn child is gone during a 30s drain (init %s; container output %q; report %s)", held, c.Output.String(), reportJSON(reports.NextReport(t, c.ID)))
			}
			if order == "children-first" && initH.Exited() {
				t.Fatal("children-first: init exited during the drain, before its own signal")
			}
			took, st, err := c.Stop(ctx, syscall.SIGKILL, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if took > 3*time.Second {
				t.Fatalf("SIGKILL during the drain took %v to stop the container (grace period 30s)", took)
			}
			want := exitSIGKILL
			if order == "init-first" {
				want = exitOK
			}
			if st.ExitCode() != want {
				t.Fatalf("init exited with code %d, want %d", st.ExitCode(), want)
			}
			if !child.Exited() {
				t.Fatal("the stubborn child outlived the container")
			}
			if tracers := findTracers(initPid); len(tracers) > 0 {
				t.Fatalf("tracer processes left: %v", tracers)
			}
		})
	}
}

// The tracer killed during a hold: the kernel detaches it, init finishes exiting, the container
// stops and no tracer is left behind.
func TestTracerKilledDuringHold(t *testing.T) {
	script := ignoringChild + `trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script,
		Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "30s"}})
	waitTrapped(t, c, "ignoring")
	initPid := int(c.Task.Pid())
	if err := c.Task.Kill(namespaces.WithNamespace(context.Background(), stack.Namespace), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, initPid)
	tracers := findTracers(initPid)
	if len(tracers) != 1 {
		t.Fatalf("want one tracer, found %v", tracers)
	}
	killed := time.Now()
	syscall.Kill(tracers[0], syscall.SIGKILL)
	took, _, err := c.WaitExit(killed, 5*time.Second)
	if err != nil {
		t.Fatalf("container did not stop after its tracer was killed: %v", err)
	}
	t.Logf("stopped %v after the tracer was killed", took)
	if left := findTracers(initPid); len(left) > 0 {
		t.Fatalf("tracer processes left: %v", left)
	}
}

// A paused container's stop is forwarded as with the stock shim: nothing is signalled while the
// container is frozen, the signal stays pending at init (and at init only), and the container stops
// when it is resumed.
func TestPausedContainerStopIsForwarded(t *testing.T) {
	script := childTraps("child") + `echo pid $!
trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
	waitTrapped(t, c, "child")
	initPid, childPid := int(c.Task.Pid()), sentinelPid(t, c)
	ctx := namespaces.WithNamespace(context.Background(), stack.Namespace)
	if err := c.Task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The forwarded Kill has run runc kill when it returns: the TERM is queued at init, which
	// cannot take it while frozen; a drain would have queued one at the child.
	if pending := pendingSignals(t, initPid); pending&sigBit(syscall.SIGTERM) == 0 {
		t.Fatalf("no TERM pending at the frozen init (pending %#x): the stop was not forwarded", pending)
	}
	if pending := pendingSignals(t, childPid); pending&sigBit(syscall.SIGTERM) != 0 {
		t.Fatalf("TERM pending at the frozen child (pending %#x): the paused container was drained", pending)
	}
	select {
	case st := <-c.Exit:
		t.Fatalf("paused container exited (code %d)", st.ExitCode())
	default:
	}
	if st, err := c.Task.Status(ctx); err != nil || st.Status != "paused" {
		t.Fatalf("status %v (%v), want paused", st.Status, err)
	}
	resumed := time.Now()
	if err := c.Task.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	_, st, err := c.WaitExit(resumed, 10*time.Second)
	if err != nil {
		t.Fatalf("container did not stop once resumed: %v", err)
	}
	if st.ExitCode() != exitOK {
		t.Fatalf("init exited with code %d, want 0 from its TERM trap", st.ExitCode())
	}
}

// pendingSignals returns the signals pending at process pid: its own and its thread group's
// (SigPnd | ShdPnd, bit N-1 for signal N).
func pendingSignals(t *testing.T, pid int) uint64 {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d", pid)
	var pending uint64
	for _, key := range []string{"SigPnd", "ShdPnd"} {
		v, err := strconv.ParseUint(statusField(dir, key), 16, 64)
		if err != nil {
			t.Fatalf("%s of %d: %v", key, pid, err)
		}
		pending |= v
	}
	return pending
}

func sigBit(sig syscall.Signal) uint64 { return 1 << (uint(sig) - 1) }

// openPid opens a pidfd on pid, which must be alive, and closes it at cleanup.
func openPid(t *testing.T, what string, pid int) *process.Handle {
	t.Helper()
	h, err := process.Open(pid)
	if err != nil {
		t.Fatalf("pidfd of %s %d: %v", what, pid, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// waitMarker waits up to 10s until the container wrote want to /out/name.
func waitMarker(t *testing.T, c *stack.Container, name, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Marker(name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("/out/%s is %q after 10s, want %q", name, c.Marker(name), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitHeld waits until init is held in its exit: a thread of init sits in the PTRACE_EVENT_EXIT
// stop of its hold-init tracer. State t alone does not tell, a signal-delivery-stop shows t too;
// nor does PF_EXITING, which do_exit sets only after that stop (exit_signals comes after
// ptrace_event(PTRACE_EVENT_EXIT)). The kernel stack does: the exit stop is ptrace_stop called
// from do_exit, a signal-delivery-stop is ptrace_stop called from get_signal.
func waitHeld(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		why := notHeld(pid)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("init %d not held in its exit stop: %s", pid, why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// notHeld returns "" when a thread of process pid is stopped in do_exit by the process's hold-init
// tracer, or else why not.
func notHeld(pid int) string {
	tracers := findTracers(pid)
	if len(tracers) != 1 {
		return fmt.Sprintf("hold-init tracers %v, want one", tracers)
	}
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err.Error()
	}
	var seen []string
	for _, e := range tids {
		dir := fmt.Sprintf("/proc/%d/task/%s", pid, e.Name())
		state, tracer := statusField(dir, "State"), statusField(dir, "TracerPid")
		stack, err := os.ReadFile(dir + "/stack")
		if err != nil {
			return fmt.Sprintf("thread %s: %v", e.Name(), err)
		}
		frames := stackFunctions(string(stack))
		if strings.HasPrefix(state, "t") && tracer == fmt.Sprint(tracers[0]) &&
			slices.Contains(frames, "ptrace_stop") && slices.Contains(frames, "do_exit") {
			return ""
		}
		seen = append(seen, fmt.Sprintf("thread %s: state %q tracer %s stack %v", e.Name(), state, tracer, frames))
	}
	return fmt.Sprintf("no thread in the exit stop of tracer %d: %s", tracers[0], strings.Join(seen, "; "))
}

// statusField returns the value of key in dir/status (dir a /proc/PID or /proc/PID/task/TID).
func statusField(dir, key string) string {
	data, _ := os.ReadFile(dir + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// stackFunctions lists the functions of a kernel stack as /proc/PID/stack shows it, innermost
// first: "[<0>] ptrace_stop+0x132/0x340" is ptrace_stop.
func stackFunctions(stack string) []string {
	var fns []string
	for _, line := range strings.Split(stack, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		fn, _, _ := strings.Cut(f[1], "+")
		// A compiler's clone of a function keeps its name with a suffix: ptrace_stop.part.0
		// (Debian's 6.1), foo.isra.0, foo.constprop.0.
		fn, _, _ = strings.Cut(fn, ".")
		fns = append(fns, fn)
	}
	return fns
}

// findTracers lists the tracer processes holding pid.
func findTracers(pid int) []int {
	return findProcesses(func(args []string) bool {
		// graceful-hold PID, or the shim binary's own tracer mode: SHIM hold-init PID.
		helper := len(args) == 2 && filepath.Base(args[0]) == "graceful-hold" && args[1] == fmt.Sprint(pid)
		return helper || len(args) == 3 && args[1] == "hold-init" && args[2] == fmt.Sprint(pid)
	})
}

// findProcesses lists the host's processes whose command line (split at NULs) matches.
func findProcesses(match func(args []string) bool) []int {
	var found []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")) {
			var n int
			fmt.Sscan(e.Name(), &n)
			found = append(found, n)
		}
	}
	return found
}

func countThreads(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// reportJSON is r in JSON, for a failure message.
func reportJSON(r *stack.StopReport) string {
	data, _ := json.Marshal(r)
	return string(data)
}
