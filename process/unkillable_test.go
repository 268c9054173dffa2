package process

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A process that cannot die — frozen by the cgroup v1 freezer, which puts it in uninterruptible
// sleep where even SIGKILL waits — does not hang the drain: it is reported as survived once the
// SIGKILL wait is over.
func TestDrainGivesUpOnAnUnkillableProcess(t *testing.T) {
	freezerRoot := "/sys/fs/cgroup/freezer"
	if _, err := os.Stat(filepath.Join(freezerRoot, "cgroup.procs")); err != nil {
		t.Fatalf("this test needs the cgroup v1 freezer at %s: %v", freezerRoot, err)
	}
	ns := startNamespace(t, `sleep 1000 & echo ready; wait`)
	scope := ns.scope(t)
	members, err := scope.Members()
	if err != nil || len(members) != 1 {
		t.Fatalf("members %v (%v)", members, err)
	}
	cg := filepath.Join(freezerRoot, fmt.Sprintf("graceful-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("THAWED"), 0o644)
		for i := 0; i < 100 && os.Remove(cg) != nil; i++ {
			time.Sleep(20 * time.Millisecond) // the killed process leaves the cgroup once thawed
		}
	})
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(members[0])), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("FROZEN"), 0o644); err != nil {
		t.Fatal(err)
	}
	grace := 200 * time.Millisecond
	cfg := DrainConfig{Signal: unix.SIGTERM, KillWait: 300 * time.Millisecond, KillSweeps: testKillSweeps}
	report := Drain(context.Background(), scope, cfg, grace)
	if report.Count(Survived) != 1 {
		t.Fatalf("want the frozen process reported as survived: %+v", report.Processes)
	}
	// About Grace + KillWait (0.5 s) is expected: 4x that leaves a loaded machine its margin, and
	// stays under the 2.2 s at least (the grace and the shim's KillWait of 2 s) that a drain
	// ignoring cfg.KillWait would take.
	if limit := 4 * (grace + cfg.KillWait); report.Duration > limit {
		t.Fatalf("drain took %v, want under %v", report.Duration, limit)
	}
}
