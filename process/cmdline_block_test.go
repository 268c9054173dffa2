package process

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildStuckArgv compiles testdata/stuckargv.c, a process whose command line cannot be read while
// it lives, and returns the binary's path.
func buildStuckArgv(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to build testdata/stuckargv.c (make stack installs it): %v", err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("stuckargv needs FUSE (make stack loads the fuse module): %v", err)
	}
	bin := filepath.Join(t.TempDir(), "stuckargv")
	out, err := exec.Command(gcc, "-O2", "-Wall", "-pthread", "-Wl,-z,now", "-o", bin, filepath.Join("testdata", "stuckargv.c")).CombinedOutput()
	if err != nil {
		t.Fatalf("build stuckargv: %v\n%s", err, out)
	}
	return bin
}

// A member whose /proc/PID/cmdline read blocks (its mmap lock is held: in production, a process
// stuck in a page fault on a hung FUSE or NFS mount) must not stall the drain: the others still get
// the signal, the drain still ends, and the stuck member still gets the signal. The stuck member
// is testdata/stuckargv.c; its FUSE mount stays in the namespace's own mount namespace.
func TestDrainIsNotStalledByABlockedCommandLineRead(t *testing.T) {
	helper := buildStuckArgv(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "mnt"), 0o755); err != nil {
		t.Fatal(err)
	}

	// goAside runs f in a goroutine that the test waits for at cleanup: after the namespace is
	// killed (this cleanup is registered before it, so runs after), which ends every blocked read.
	// Nothing this test started outlives it.
	var goroutines []struct {
		done <-chan struct{}
		what string
	}
	goAside := func(what string, f func()) <-chan struct{} {
		done := make(chan struct{})
		goroutines = append(goroutines, struct {
			done <-chan struct{}
			what string
		}{done, what})
		go func() {
			defer close(done)
			f()
		}()
		return done
	}
	t.Cleanup(func() {
		for _, g := range goroutines {
			select {
			case <-g.done:
			case <-time.After(10 * time.Second):
				t.Errorf("%s still blocked 10s after the namespace was killed", g.what)
			}
		}
	})

	// The stuck member comes first, so that the members after it are the ones a drain that reads
	// its command line before signalling it never gets to.
	script := fmt.Sprintf(`
%[2]s %[1]s/mnt %[1]s/stuck &
i=0; while [ ! -e %[1]s/stuck ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
child() { trap "echo \$1 > %[1]s/\$1; exit 0" TERM; echo trapped $1; while :; do sleep 0.05; done; }
child a & child b &
echo ready; wait`, dir, helper)
	ns := startNamespace(t, script)
	ns.expect(t, "trapped a") // each child's trap is set
	ns.expect(t, "trapped b")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // runs first: a stalled drain ends as soon as the namespace is gone
	if _, err := os.Stat(filepath.Join(dir, "stuck")); err != nil {
		t.Fatalf("stuckargv did not get ready: %v", err)
	}
	scope := ns.scope(t)
	members, err := scope.Members()
	if err != nil {
		t.Fatal(err)
	}
	stuck := 0
	for _, pid := range members {
		if st, err := ReadStatus(pid); err == nil && st.Name == "stuckargv" && st.PPid == ns.init {
			stuck = pid
		}
	}
	if stuck == 0 {
		t.Fatalf("no stuckargv among the members %v", members)
	}

	// The premise: reading its command line really blocks.
	probed := goAside("the probing read of the command line", func() { readCmdline(stuck) })
	select {
	case <-probed:
		t.Fatalf("reading /proc/%d/cmdline did not block: the test proves nothing", stuck)
	case <-time.After(500 * time.Millisecond):
	}

	const grace, bound = 3 * time.Second, 15 * time.Second
	drained := make(chan *Report, 1)
	start := time.Now()
	goAside("the drain", func() {
		drained <- Drain(ctx, scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, grace)
	})
	var report *Report
	select {
	case report = <-drained:
	case <-time.After(bound):
		t.Fatalf("Drain (grace %v) has not returned after %v: stalled by the command line of %d "+
			"(TERM handlers run: a %q, b %q)", grace, bound, stuck,
			readMarker(t, filepath.Join(dir, "a")), readMarker(t, filepath.Join(dir, "b")))
	}
	took := time.Since(start)
	t.Logf("drain took %v (grace expired %v): %v", took, report.GraceExpired, report.Totals)

	for _, name := range []string{"a", "b"} {
		if got := readMarker(t, filepath.Join(dir, name)); got != name {
			t.Errorf("child %s: TERM handler did not run (marker %q)", name, got)
		}
	}
	var entry *ProcessReport
	for i := range report.Processes {
		if report.Processes[i].Pid == stuck {
			entry = &report.Processes[i]
		}
	}
	switch {
	case entry == nil:
		t.Errorf("the stuck member %d is not in the report: %+v", stuck, report.Processes)
	case !slices.Contains(entry.Signals, SignalName(unix.SIGTERM)):
		t.Errorf("the stuck member %d did not get SIGTERM: %+v", stuck, *entry)
	case entry.Outcome != ExitedAfterSignal && entry.Outcome != Killed:
		t.Errorf("the stuck member %d ended %q, want %q or %q: %+v", stuck, entry.Outcome, ExitedAfterSignal, Killed, *entry)
	default:
		t.Logf("the stuck member: %d %s after %v", stuck, entry.Outcome, entry.After)
	}
	select {
	case <-probed:
	case <-time.After(5 * time.Second):
		t.Errorf("reading /proc/%d/cmdline still blocks 5s after the drain", stuck)
	}
	left, _ := scope.Members()
	for _, pid := range left {
		if st, err := ReadStatus(pid); err == nil && st.State != 'Z' {
			t.Errorf("process %d (%s) still alive after the drain", pid, st.Name)
		}
	}
}
