package integration

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// A container with its own PID namespace is signalled at once, from inside it (the signaller's
// kill(-1)), in both orders: every child's TERM handler runs, the report counts each child and
// says how many were signalled at once, no signaller is left on the host, and none is in the
// report. In init-first, init's own shutdown does `kill -HUP -1` (as shutdown scripts do, the
// children ignore it) while the signaller is already in the namespace: the signaller ignores it
// too, and the drain still signals at once; init, held, has its children release themselves.
func TestDrainSignalsTheNamespaceAtOnce(t *testing.T) {
	// Enough for the drain to prefer kill(-1) (see decideSignalling in shim/plan.go) on a host of a few
	// thousand tasks.
	const children = 150
	for _, order := range []string{"init-first", "children-first"} {
		t.Run(order, func(t *testing.T) {
			reports := subscribeReports(t)
			script := ""
			for i := 0; i < children; i++ {
				script += fmt.Sprintf(`sh -c 'trap "" HUP; trap "echo clean > /out/c%d; exit 0" TERM; echo trapped c%d; while :; do sleep 0.05; done' &`+"\n", i, i)
			}
			if order == "init-first" {
				script += `trap "kill -HUP -1; exit 0" TERM` + "\n"
			}
			script += "echo ready\n" + loop
			c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script,
				Annotations: map[string]string{"io.containerd.graceful.v2.stop-order": order}})
			for i := 0; i < children; i++ {
				waitTrapped(t, c, fmt.Sprintf("c%d", i))
			}
			stopExpect(t, c, 30*time.Second, exitOK, exitSIGKILL)
			r := reports.NextReport(t, c.ID)
			if r.Order != order || r.Drain == nil {
				t.Fatalf("order %q, drain %v: want %s with a drain", r.Order, r.Drain != nil, order)
			}
			for i := 0; i < children; i++ {
				if got := c.Marker(fmt.Sprintf("c%d", i)); got != "clean" {
					t.Errorf("child c%d did not run its TERM handler (marker %q)", i, got)
				}
			}
			d := r.Drain
			t.Logf("at once %d, totals %v, notes %q, took %v", d.AtOnce, d.Totals, d.Notes, time.Duration(d.Duration))
			if len(d.Notes) > 0 {
				t.Fatalf("the drain fell back: %q", d.Notes)
			}
			// init-first: init (sh, one thread) was made to ignore SIGCHLD before its exit, so the
			// children that died while it was held were not left as zombies; its exit status 0 is
			// asserted above.
			if want := order == "init-first"; r.InitAutoreap != want {
				t.Fatalf("init_autoreap %v, want %v (notes %q)", r.InitAutoreap, want, r.Notes)
			}
			if d.AtOnce < children {
				t.Fatalf("%d members signalled at once, want at least the %d children", d.AtOnce, children)
			}
			for _, p := range d.Processes {
				if strings.Contains(p.Command, "graceful-hold") || strings.Contains(p.Command, "-signal-all") {
					t.Fatalf("the signaller is in the report: %+v", p)
				}
			}
			if left := findSignallers(); len(left) > 0 {
				// It exits at EOF once the drain ends; give it a moment, then insist.
				deadline := time.Now().Add(5 * time.Second)
				for len(findSignallers()) > 0 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if left := findSignallers(); len(left) > 0 {
					t.Fatalf("signallers left after the stop: %v", left)
				}
			}
		})
	}
}

// findSignallers lists the signaller processes on the host: graceful-hold -signal-all NS, or the
// shim binary's fallback mode SHIM hold-init -signal-all NS.
func findSignallers() []int {
	return findProcesses(func(args []string) bool { return slices.Contains(args, "-signal-all") })
}

// The signaller serves its one kill(-1) and goes: while the drain still waits for a child that
// ignores TERM (until its grace period ends), no signaller is left, in the container's namespace or
// anywhere, so that init's exit never waits for it (the kernel's zap waits for every process of
// the namespace) and `ps` in the container shows only the container's own processes.
func TestSignallerLeavesOnceItHasSignalled(t *testing.T) {
	const children = 150 // enough to signal at once (see TestDrainSignalsTheNamespaceAtOnce)
	reports := subscribeReports(t)
	script := ignoringChild + `sh -c 'trap "echo got-term; exit 0" TERM; echo trapped quick; ` + loop + `' &` + "\n"
	// A handler that forks: its own sleep, started after its TERM, must not be TERMed (its status
	// would be 143), whatever the kill(-1) walk and the drain's fork tracking see.
	script += `sh -c 'trap "sleep 1; echo \$? > /out/slow; exit 0" TERM; echo trapped slow; ` + loop + `' &` + "\n"
	for i := 0; i < children; i++ {
		script += `sh -c 'trap "exit 0" TERM; ` + loop + `' &` + "\n"
	}
	script += `trap "exit 0" TERM` + "\necho ready\n" + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script,
		Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "3s"}})
	waitTrapped(t, c, "ignoring", "quick", "slow")
	stopped := make(chan error, 1)
	go func() {
		_, st, err := c.Stop(stackContext(), syscall.SIGTERM, 30*time.Second)
		if err == nil && st.ExitCode() != exitOK {
			err = fmt.Errorf("exit status %d, want %d", st.ExitCode(), exitOK)
		}
		stopped <- err
	}()
	// The quick child's handler runs: the signaller's kill(-1) has been sent.
	if err := c.Output.WaitLine("got-term", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second) // the drain waits 3 s for the ignoring child
	for len(findSignallers()) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	left := findSignallers()
	select {
	case err := <-stopped:
		t.Fatalf("the stop ended (%v) before the check, which then proves nothing", err)
	default:
	}
	if len(left) > 0 {
		t.Fatalf("signallers %v still there up to 2 s into the drain, after their kill(-1)", left)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if got := c.Marker("slow"); got != "0" {
		t.Fatalf("the forking handler's own sleep ended with status %q, want \"0\" (143: it was TERMed)", got)
	}
	r := reports.NextReport(t, c.ID)
	if r.Drain == nil || r.Drain.AtOnce < children || len(r.Drain.Notes) > 0 || !r.Drain.GraceExpired {
		t.Fatalf("drain %+v: want %d or more members signalled at once, without a fallback, and the ignoring child outlasting the grace period", r.Drain, children)
	}
}

// A graceful shim sizes its descriptor table for a drain's pidfds soon after it starts, so that a
// stop that opens hundreds of them does not wait for the kernel to grow a table shared by the
// shim's threads (an RCU grace period per doubling from 64: about 10 ms each here, which a stop
// of 1 000 processes paid before its signal).
func TestShimHasRoomForADrainsPidfds(t *testing.T) {
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: "echo ready\n" + loop})
	shim := shimOf(t, c)
	deadline := time.Now().Add(10 * time.Second)
	for {
		size, err := fdTableSize(shim)
		if err != nil {
			t.Fatal(err)
		}
		if size >= process.DrainDescriptors {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shim's descriptor table holds %d descriptors 10 s after its start, want at least %d", size, process.DrainDescriptors)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopExpect(t, c, 30*time.Second, exitSIGKILL)
}

// fdTableSize is FDSize of /proc/PID/status: the size of the process's descriptor table.
func fdTableSize(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "FDSize:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no FDSize in /proc/%d/status", pid)
}
