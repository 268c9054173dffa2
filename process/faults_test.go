package process

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A member whose pidfd cannot be opened at first (too many open files, as a shim at its
// descriptor limit would see) is neither taken for exited nor left out: the drain opens it again,
// signals it then, and waits for its handler (0.4 s). Before, it went untracked, and the drain
// ended without it.
func TestDrainWaitsForAMemberItCouldNotOpenAtFirst(t *testing.T) {
	dir := t.TempDir()
	ns := startNamespace(t, fmt.Sprintf(`sh -c 'trap "sleep 0.4; echo done > %s/m; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; wait`, dir))
	ns.expect(t, "trapped")
	scope := ns.scope(t)
	members, err := scope.Members()
	if err != nil || len(members) == 0 {
		t.Fatalf("members %v (%v)", members, err)
	}
	// The trapping shell (its loop's sleeps come and go): refuse its pidfd for the first 200 ms
	// of the drain.
	target := 0
	for _, pid := range members {
		if st, err := ReadStatus(pid); err == nil && st.Name == "sh" {
			target = pid
		}
	}
	if target == 0 {
		t.Fatalf("no shell among the members %v", members)
	}
	var until atomic.Int64
	until.Store(time.Now().Add(200 * time.Millisecond).UnixNano())
	var refused atomic.Int32
	open := pidfdOpen
	pidfdOpen = func(pid int, flags int) (int, error) {
		if pid == target && time.Now().UnixNano() < until.Load() {
			refused.Add(1)
			return -1, unix.EMFILE
		}
		return open(pid, flags)
	}
	t.Cleanup(func() { pidfdOpen = open })
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 10*time.Second)
	if refused.Load() == 0 {
		t.Fatal("the injected failure was never hit: the test proves nothing")
	}
	if got := readMarker(t, filepath.Join(dir, "m")); got != "done" {
		t.Fatalf("the member's handler did not finish before the drain ended (marker %q); report %+v", got, report)
	}
	if report.Duration < 400*time.Millisecond || report.GraceExpired || report.Count(Killed) != 0 {
		t.Fatalf("drain %v, grace expired %v, killed %d: want it to wait for the member's 0.4 s handler", report.Duration, report.GraceExpired, report.Count(Killed))
	}
	if len(report.Notes) == 0 {
		t.Fatal("the report does not say that a member could not be opened")
	}
}

// A drain at once whose reads of cgroup.procs fail after the signal (too many open files, no
// memory) does not take its members for exited: it waits for a member's 0.5 s handler. Before,
// one failed read ended every member at once, and the drain with them.
func TestDrainAtOnceSurvivesAFailedListRead(t *testing.T) {
	dir := benchCgroup(t)
	marks := t.TempDir()
	script := ""
	for i := 0; i < 20; i++ {
		script += fmt.Sprintf(`sh -c 'trap "sleep 0.5; echo done > %s/m%d; exit 0" TERM; echo trapped%d; sleep 1000 & wait' &`+"\n", marks, i, i)
	}
	script += "echo ready; exec sleep 1000"
	ns := startNamespaceIn(t, dir, script)
	for i := 0; i < 20; i++ {
		ns.expect(t, fmt.Sprintf("trapped%d", i)) // its trap is set
	}
	ns.awaitExeced(t, "sleep", 20) // and its sleep started
	sig := startTestSignaller(t, ns.init)
	// The first read (at the signal) succeeds; every later one fails, and so does the
	// fallback's listing of /proc (as they would at the descriptor limit).
	var mu sync.Mutex
	reads := 0
	read, readProc := readCgroupTree, readProcDir
	readCgroupTree = func(pids []int, dir string) ([]int, error) {
		mu.Lock()
		reads++
		n := reads
		mu.Unlock()
		if n > 1 {
			return pids, fmt.Errorf("list %s: %w", dir, unix.EMFILE)
		}
		return read(pids, dir)
	}
	readProcDir = func() ([]int, error) { return nil, fmt.Errorf("open /proc: %w", unix.EMFILE) }
	t.Cleanup(func() { readCgroupTree, readProcDir = read, readProc })
	report := Drain(context.Background(), ns.scope(t), DrainConfig{Signal: unix.SIGTERM, Signaller: sig, KillWait: testKillWait, KillSweeps: testKillSweeps}, 10*time.Second)
	mu.Lock()
	n := reads
	mu.Unlock()
	if report.AtOnce == 0 || n < 2 {
		t.Fatalf("at once %d, %d list reads: want a drain at once that read the list again", report.AtOnce, n)
	}
	for i := 0; i < 20; i++ {
		if got := readMarker(t, filepath.Join(marks, fmt.Sprintf("m%d", i))); got != "done" {
			t.Fatalf("member %d's handler had not finished when the drain ended after %v (marker %q); report %+v", i, report.Duration, got, report.Totals)
		}
	}
	if report.Duration < 500*time.Millisecond || report.Count(Killed) != 0 {
		t.Fatalf("drain %v, killed %d: want it to wait for the members' 0.5 s handlers", report.Duration, report.Count(Killed))
	}
}

// A member that could not be opened at first and has exited by the time it is opened again is
// counted once, as exited before the drain's signal. Before, the retry counted it twice.
func TestMemberFoundExitedOnRetryIsCountedOnce(t *testing.T) {
	// init's background sleep exits after 0.3 s and, init having exec'd a sleep that never
	// waits, stays a zombie: a member that has exited.
	ns := startNamespace(t, "sleep 0.3 & echo ready; exec sleep 1000")
	scope := ns.scope(t)
	members, err := scope.Members()
	if err != nil || len(members) != 1 {
		t.Fatalf("members %v (%v), want the one sleep", members, err)
	}
	target := members[0]
	h, err := Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var refused atomic.Int32
	open := pidfdOpen
	pidfdOpen = func(pid int, flags int) (int, error) {
		if pid == target && !h.Exited() {
			refused.Add(1)
			return -1, unix.EMFILE
		}
		return open(pid, flags)
	}
	t.Cleanup(func() { pidfdOpen = open })
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 10*time.Second)
	if refused.Load() == 0 {
		t.Fatal("the injected failure was never hit: the test proves nothing")
	}
	total := 0
	for _, n := range report.Totals {
		total += n
	}
	if total != 1 || report.Count(AlreadyExited) != 1 {
		t.Fatalf("totals %v: want the one member, counted once as %s", report.Totals, AlreadyExited)
	}
}
