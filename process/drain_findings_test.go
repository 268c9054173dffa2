package process

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/testtime"
)

// The PID 1 of a namespace nested in the container (unshare -p, bubblewrap) drops a TERM it has
// no handler for: it is SIGKILLed once its own namespace has drained, not left to the grace's end.
func TestDrainKillsANestedInitThatDropsTheSignal(t *testing.T) {
	dir := t.TempDir()
	script := fmt.Sprintf(`
unshare --pid --fork sh -c 'sh -c "trap \"sleep 0.1; echo clean > %s/nested; exit 0\" TERM; echo trapped; while :; do sleep 0.05; done" & while :; do sleep 0.05; done' &
echo ready; wait`, dir)
	ns := startNamespace(t, script)
	ns.expect(t, "trapped") // the nested init's child has set its trap (so the nested init is there)
	scope := ns.scope(t)
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 30*time.Second)
	if got := readMarker(t, filepath.Join(dir, "nested")); got != "clean" {
		t.Fatalf("the nested init's child did not finish its TERM handler: %+v", report.Processes)
	}
	if report.GraceExpired || report.Duration > 10*time.Second {
		t.Fatalf("drain took %v (grace expired %v): the nested init was left to the 30s grace: %+v",
			report.Duration, report.GraceExpired, report.Processes)
	}
}

// A member that keeps starting processes during the grace grows neither the report nor the
// drain's memory of finished processes without bound.
func TestDrainMemoryStaysBoundedWhileAMemberKeepsForking(t *testing.T) {
	// pruneMin+MaxDetailed (1280) is under half of them: the drain may miss nearly 60%, 3x what
	// it misses under -race on a loaded 2-core machine (see below).
	const forks = 3000
	script := fmt.Sprintf(`
sh -c 'trap "i=0; while [ \$i -lt %d ]; do /bin/true; i=\$((i+1)); done; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; wait`, forks)
	ns := startNamespace(t, script)
	ns.expect(t, "trapped")
	scope := ns.scope(t)
	d := PrepareDrain(scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}).Start(60 * time.Second)
	report := d.Finish(context.Background())
	total := 0
	for _, n := range report.Totals {
		total += n
	}
	t.Logf("totals %v: %d of the %d processes seen", report.Totals, total, forks)
	// A process reaped before the drain could open it is never seen (under -race on a loaded
	// machine 15-20% of them): the bound below means something only if the drain saw well over
	// pruneMin exits, more than an unpruned set could hold within it.
	if total < pruneMin+MaxDetailed {
		t.Fatalf("totals %v count %d of %d processes: too few to exercise the bound of %d", report.Totals, total, forks, pruneMin)
	}
	if len(report.Processes) > MaxDetailed {
		t.Fatalf("the report details %d processes, want at most %d", len(report.Processes), MaxDetailed)
	}
	if len(d.finished) > pruneMin {
		t.Fatalf("the drain remembers %d finished processes after %d exits, want at most %d", len(d.finished), total, pruneMin)
	}
}

// Children that a member forks after the drain has listed the process table but before the member
// got its signal are signalled too: they do not wait out the grace to be SIGKILLed.
func TestDrainSignalsForksThatRaceTheFirstSweep(t *testing.T) {
	// 2000 idle members come first in the process table, so the sweep reaches the forker late;
	// the forker forks as fast as it can from the moment the drain starts (the file "go").
	dir := t.TempDir()
	script := fmt.Sprintf(`
i=0; while [ $i -lt 2000 ]; do sleep 1000 & i=$((i+1)); done
sh -c 'echo waiting; while [ ! -e %s/go ]; do sleep 0.01; done; while :; do sleep 1000 & done' &
echo ready; wait`, dir)
	ns := startNamespace(t, script)
	ns.expect(t, "waiting") // the forker runs its own script, waiting for "go"
	scope := ns.scope(t)
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 10*time.Second)
	t.Logf("totals %v after %v", report.Totals, report.Duration)
	// Nothing here starts a cleanup helper: every process must have been sent the drain signal.
	if report.GraceExpired || report.Totals[Killed] > 0 || report.Totals[ExitedUnsignalled] > 0 {
		t.Fatalf("%d processes got no TERM (totals %v): forks that raced the sweep were not signalled",
			report.Totals[Killed]+report.Totals[ExitedUnsignalled], report.Totals)
	}
}

const pidnsDrainEnv = "GRACEFUL_TEST_DRAIN_IN_PIDNS"

// Outside the initial PID namespace the proc connector is silent: the drain must notice and re-read
// the process table, so that a cleanup helper started by a member is still waited for.
func TestDrainOutsideTheInitialPIDNamespaceWaitsForCleanupHelpers(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", self,
		"-test.run", "^TestDrainInAPIDNamespace$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), pidnsDrainEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestDrainInAPIDNamespace") {
		t.Fatalf("drain inside a PID namespace (%v):\n%s", err, out)
	}
}

// TestDrainInAPIDNamespace is the body of the test above, run inside its PID namespace.
func TestDrainInAPIDNamespace(t *testing.T) {
	if os.Getenv(pidnsDrainEnv) == "" {
		t.Skip("run by TestDrainOutsideTheInitialPIDNamespaceWaitsForCleanupHelpers")
	}
	dir := t.TempDir()
	// On TERM the member starts a helper that computes for a few hundred milliseconds, starting
	// no process the drain could notice, and exits 100 ms later.
	script := fmt.Sprintf(`
sh -c 'trap "sh -c \"i=0; while [ \\\$i -lt 300000 ]; do i=\\\$((i+1)); done; echo late > %[1]s/late\" & sleep 0.1; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; while :; do sleep 0.01; done`, dir)
	ns := startNamespace(t, script)
	ns.expect(t, "trapped")
	scope := ns.scope(t)
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, testtime.Scale(5*time.Second))
	if got := readMarker(t, filepath.Join(dir, "late")); got != "late" {
		t.Fatalf("the drain ended before the cleanup helper finished: %+v", report.Processes)
	}
}

// A handler's process created while the drain starts, after the stop began but before the first
// sweep lists the members, is spared like one created earlier: under tini -g a helper gets init's
// TERM at once and forks its flush while the shim's drain starts (seen in CI: the drain TERMed the
// flush).
func TestDrainSparesAHandlersForkThatRacesTheFirstSweep(t *testing.T) {
	dir := t.TempDir()
	// The helper's USR1 stands for the TERM a group-forwarding init passes on: its handler runs a
	// flush in a child process; it catches the drain's TERM and does nothing (its children, which
	// do not inherit a handler, die of it), as a handler that lets a second signal pass does.
	script := fmt.Sprintf(`sh -c 'trap "sh -c \"sleep 0.3; echo clean > %s/flush\"; exit 0" USR1; trap : TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; wait`, dir)
	ns := startNamespace(t, script)
	ns.expect(t, "trapped")
	children, err := childrenOf(ns.init)
	if err != nil || len(children) != 1 {
		t.Fatalf("init's children %v (%v), want the helper", children, err)
	}
	helper := children[0]
	scope := ns.scope(t)
	begun, err := NewForkWatch()
	if err != nil {
		t.Fatal(err)
	}
	beforeFirstSweep = func() {
		if err := unix.Kill(helper, unix.SIGUSR1); err != nil {
			t.Error(err)
			return
		}
		// The flush's shell is forked once the helper's current sleep ends; it runs once it has
		// started its own sleep (a grandchild of the helper: the helper's loop sleeps have none).
		deadline := time.Now().Add(testtime.Scale(5 * time.Second))
		for time.Now().Before(deadline) {
			kids, _ := childrenOf(helper)
			for _, k := range kids {
				if grandchildren, _ := childrenOf(k); len(grandchildren) > 0 {
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
		t.Error("the helper did not start its flush")
	}
	defer func() { beforeFirstSweep = nil }()
	report := PrepareDrain(scope, DrainConfig{Signal: unix.SIGTERM, Begun: begun, KillWait: testKillWait, KillSweeps: testKillSweeps}).Start(testtime.Scale(5 * time.Second)).Finish(context.Background())
	if got := readMarker(t, filepath.Join(dir, "flush")); got != "clean" {
		t.Fatalf("the flush was cut (marker %q): notes %q, processes %+v", got, report.Notes, report.Processes)
	}
	if report.GraceExpired {
		t.Fatalf("the drain waited out its grace: %+v", report.Processes)
	}
}
