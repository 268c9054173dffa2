package process

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/testguard"
)

func TestScopeOfNamespaceListsOnlyItsMembers(t *testing.T) {
	outside := exec.Command("sleep", "60")
	if err := testguard.Start(outside); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outside.Process.Kill(); outside.Wait() })

	ns := startNamespace(t, `sleep 60 & sleep 60 & unshare --pid --fork sleep 60 & echo ready; wait`)
	ns.awaitExeced(t, "sleep", 3) // the nested sleep too: unshare has forked
	scope := ns.scope(t)
	if scope.Kind != ByPIDNamespace {
		t.Fatalf("scope kind %s, want %s", scope.Kind, ByPIDNamespace)
	}
	members, err := scope.Members()
	if err != nil {
		t.Fatal(err)
	}
	// two sleeps, the nested unshare and its nested sleep (in a child namespace)
	if len(members) != 4 {
		t.Fatalf("members %v, want 4", members)
	}
	for _, pid := range members {
		if pid == ns.init || pid == outside.Process.Pid || pid == os.Getpid() {
			t.Fatalf("members %v include %d", members, pid)
		}
	}
}

func TestDrainRunsEveryHandlerAndKillsAtGrace(t *testing.T) {
	dir := t.TempDir()
	// init has no TERM trap (as run.sh); children clean up on TERM, one ignores TERM.
	script := fmt.Sprintf(`
child() { trap "echo \$1 > %[1]s/\$1; exit 0" TERM; echo trapped $1; while :; do sleep 0.05; done; }
child a & child b &
sh -c 'trap "" TERM; echo ignoring; while :; do sleep 0.05; done' &
setsid sh -c 'trap "echo c > %[1]s/c; exit 0" TERM; echo trapped c; while :; do sleep 0.05; done' &
echo ready; wait`, dir)
	ns := startNamespace(t, script)
	for _, line := range []string{"trapped a", "trapped b", "ignoring", "trapped c"} {
		ns.expect(t, line) // each trap is set
	}
	scope := ns.scope(t)
	// The drain ends once the SIGKILLed child is gone: about the grace. The bound on it is 3x that
	// (a loaded machine), and the wait for the SIGKILLed to disappear much longer than the bound,
	// so that a drain that waits it out is still caught.
	grace, killWait := 700*time.Millisecond, 10*time.Second
	bound := 3 * grace
	start := time.Now()
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: killWait, KillSweeps: testKillSweeps}, grace)
	took := time.Since(start)
	for _, name := range []string{"a", "b", "c"} {
		if got := readMarker(t, filepath.Join(dir, name)); got != name {
			t.Errorf("child %s: TERM handler did not run (marker %q)", name, got)
		}
	}
	if report.Count(Killed) < 1 {
		t.Errorf("TERM-ignoring child not killed: %+v", report.Processes)
	}
	if !report.GraceExpired {
		t.Errorf("grace not reported as expired")
	}
	if took < grace || took > bound {
		t.Errorf("drain took %v, want between %v and %v", took, grace, bound)
	}
	left, _ := scope.Members()
	for _, pid := range left {
		if st, err := ReadStatus(pid); err == nil && st.State != 'Z' {
			t.Errorf("process %d (%s) still alive after the drain", pid, st.Name)
		}
	}
}

func TestDrainEndsAsSoonAsMembersExit(t *testing.T) {
	ns := startNamespace(t, `sleep 60 & sleep 60 & echo ready; wait`)
	ns.awaitExeced(t, "sleep", 2)
	scope := ns.scope(t)
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 10*time.Second)
	if report.Duration > 2*time.Second || report.GraceExpired {
		t.Fatalf("drain of processes that exit on TERM took %v (grace expired %v)", report.Duration, report.GraceExpired)
	}
	if got := report.Count(ExitedAfterSignal); got != 2 {
		t.Fatalf("%d processes exited after TERM, want 2: %+v", got, report.Processes)
	}
}

func TestDrainWaitsForProcessesStartedByCleanupWithoutSignallingThem(t *testing.T) {
	dir := t.TempDir()
	// On TERM the process starts a cleanup helper and exits at once; the helper needs 300ms.
	script := fmt.Sprintf(`
sh -c 'trap "sh -c \"sleep 0.3; echo late > %[1]s/late\" & exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; while :; do sleep 0.01; done`, dir)
	ns := startNamespace(t, script)
	ns.expect(t, "trapped")
	scope := ns.scope(t)
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 5*time.Second)
	if got := readMarker(t, filepath.Join(dir, "late")); got != "late" {
		t.Fatalf("the drain ended before the cleanup helper finished, or signalled it: %+v", report.Processes)
	}
	if report.GraceExpired || report.Count(ExitedUnsignalled) < 1 {
		t.Fatalf("want the helper waited for without a signal: %+v", report.Processes)
	}
}

func TestDrainCancelStopsAtOnce(t *testing.T) {
	ns := startNamespace(t, `sh -c 'trap "" TERM; echo trapped; while :; do sleep 0.05; done' & echo ready; wait`)
	ns.expect(t, "trapped")
	scope := ns.scope(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	report := Drain(ctx, scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 30*time.Second)
	if !report.Cancelled || report.Duration > 2*time.Second {
		t.Fatalf("cancelled drain: cancelled=%v after %v", report.Cancelled, report.Duration)
	}
}

func TestDispositionsOfNamespaceInit(t *testing.T) {
	trapped := startNamespace(t, `trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done`)
	plain := startNamespace(t, `echo ready; while :; do sleep 0.01; done`)
	for _, c := range []struct {
		ns   *namespace
		want bool
	}{{trapped, true}, {plain, false}} {
		st, err := ReadStatus(c.ns.init)
		if err != nil {
			t.Fatal(err)
		}
		if !st.NamespaceInit() {
			t.Fatalf("%d is not PID 1 of its namespace: NSpid %v", c.ns.init, st.NSpid)
		}
		got, err := WillHandle(c.ns.init, unix.SIGTERM)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("init %d handles TERM = %v, want %v", c.ns.init, got, c.want)
		}
	}
}

// A drain with a stop signal apart from its drain signal (an image's STOPSIGNAL SIGQUIT, for
// nginx) gives the stop signal to each member that handles it and the drain signal to the rest:
// a process trapping QUIT runs its QUIT handler only, one trapping TERM its TERM handler only, and
// a plain sleep dies of TERM (QUIT would have dumped its core). No process gets both, and the
// report says which each got.
func TestDrainGivesTheStopSignalToThoseThatHandleIt(t *testing.T) {
	dir := t.TempDir()
	script := fmt.Sprintf(`
env --default-signal=QUIT sh -c 'trap "echo quit >> %[1]s/q; exit 0" QUIT; trap "echo term >> %[1]s/q; exit 0" TERM; echo trapped q; while :; do sleep 0.05; done' &
sh -c 'trap "echo term >> %[1]s/t; exit 0" TERM; echo trapped t; while :; do sleep 0.05; done' &
sleep 1000 &
echo ready; wait`, dir)
	// A background job of a shell starts with QUIT ignored, which a shell cannot then trap: env
	// restores the default first, as a service's own process would have it.
	ns := startNamespace(t, script)
	ns.expect(t, "trapped q")
	ns.expect(t, "trapped t")
	report := Drain(context.Background(), ns.scope(t), DrainConfig{Signal: unix.SIGTERM, StopSignal: unix.SIGQUIT, KillWait: testKillWait, KillSweeps: testKillSweeps}, 10*time.Second)
	if got := readMarker(t, filepath.Join(dir, "q")); got != "quit" {
		t.Errorf("the QUIT-trapping process's handlers ran %q, want its QUIT handler only", got)
	}
	if got := readMarker(t, filepath.Join(dir, "t")); got != "term" {
		t.Errorf("the TERM-trapping process's handlers ran %q, want its TERM handler only", got)
	}
	if report.StopSignal != "SIGQUIT" || report.GraceExpired || report.Count(Killed) != 0 {
		t.Fatalf("report stop signal %q, grace expired %v, killed %d", report.StopSignal, report.GraceExpired, report.Count(Killed))
	}
	got := map[string]int{}
	for _, p := range report.Processes {
		quit, term := slices.Contains(p.Signals, "SIGQUIT"), slices.Contains(p.Signals, "SIGTERM")
		if quit && term {
			t.Fatalf("%q got both signals: %v", p.Command, p.Signals)
		}
		// A command read before its process's exec is its shell's (the init's script): only the
		// traps' own command lines are matched, at their start.
		switch {
		case strings.HasPrefix(p.Command, `sh -c trap "echo quit`):
			// The trapping shell gets QUIT; a fork of it caught before its exec (its loop's
			// sleep, which resets the traps first) may get TERM: the marker tells which ran.
			if quit {
				got["q"]++
			}
		case quit:
			t.Errorf("%q got SIGQUIT, which it does not handle (a plain sleep would dump its core)", p.Command)
		case strings.HasPrefix(p.Command, `sh -c trap "echo term`):
			got["t"]++
		case strings.HasPrefix(p.Command, "sleep 1000"):
			got["sleep"]++
		}
	}
	// A fork of a trapping shell caught before its exec carries the shell's command line and
	// handlers: it may be counted with its shell.
	if got["q"] < 1 || got["t"] < 1 || got["sleep"] > 1 {
		t.Fatalf("found %v in the report: %+v", got, report.Processes)
	}
}

// The bounds of a drain's end in these tests: the shim's (killWait and killSweeps in shim/plan.go).
const (
	testKillWait   = 2 * time.Second
	testKillSweeps = 8
)
