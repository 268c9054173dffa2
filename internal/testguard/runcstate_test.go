package testguard

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/graceful-shim/graceful/internal/procfs"
)

// A killed run's runc state (its init gone) is removed; a live container's, another namespace's
// and a state whose PID now belongs to another process are handled as they must be.
func TestSweepRuncStateRemovesOnlyStateWhoseInitIsGone(t *testing.T) {
	root := t.TempDir()
	self := os.Getpid()
	start := ownStart(t)
	write := func(ns, id string, pid int, start uint64) string {
		dir := filepath.Join(root, ns, id)
		if err := os.MkdirAll(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		state := fmt.Sprintf(`{"id":%q,"init_process_pid":%d,"init_process_start":%d}`, id, pid, start)
		if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(state), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	gone := write("graceful-test", "gone", 1<<22+1, 1) // no such PID (pid_max is at most 2^22)
	reused := write("graceful-test", "reused", self, start+1)
	live := write("graceful-test", "live", self, start)
	other := write("k8s.io", "gone", 1<<22+1, 1)

	done := sweepRuncState(root)
	for dir, want := range map[string]bool{gone: false, reused: false, live: true, other: true} {
		if _, err := os.Stat(dir); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v (swept: %v)", dir, err == nil, want, done)
		}
	}
	if len(done) != 2 {
		t.Errorf("swept %v, want the two states whose init is gone", done)
	}
}

func ownStart(t *testing.T) uint64 {
	t.Helper()
	fields, ok := procfs.StatFields("/proc/self/stat")
	if !ok {
		t.Fatal("read /proc/self/stat")
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return start
}
