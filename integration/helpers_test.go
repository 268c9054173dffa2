package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/graceful-shim/graceful/process"
)

// writeFile writes a file in a test's temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// zombieChildren lists the zombie children of pid.
func zombieChildren(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var zombies []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := process.ReadStatus(n); err == nil && st.PPid == pid && st.State == 'Z' {
			zombies = append(zombies, n)
		}
	}
	return zombies
}

// holdAlive opens a pidfd on pid (a sentinel) at once, and returns a check, for the end of the
// test, that fails unless that very process is still alive: a sentinel can trap catchable
// signals only, so a SIGKILL that reached it shows only here.
func holdAlive(t *testing.T, what string, pid int) func() {
	t.Helper()
	h, err := process.Open(pid)
	if err != nil {
		t.Fatalf("pidfd of %s %d: %v", what, pid, err)
	}
	t.Cleanup(func() { h.Close() })
	return func() {
		t.Helper()
		if h.Exited() {
			t.Errorf("%s %d died (SIGKILLed?) during the test", what, pid)
		}
	}
}
