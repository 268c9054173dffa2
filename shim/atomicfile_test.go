package shim

import (
	"os"
	"path/filepath"
	"testing"
)

// The file is replaced whole, with the mode asked for, and no temporary file stays behind, also
// when the rename fails.
func TestAtomicWriteFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "config.json")
	if err := os.WriteFile(name, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := atomicWriteFile(name, []byte("new"), 0o555); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(name); err != nil || string(data) != "new" {
		t.Fatalf("content %q (%v), want new", data, err)
	}
	if st, err := os.Stat(name); err != nil || st.Mode().Perm() != 0o555 {
		t.Fatalf("mode %v (%v), want 0555", st.Mode().Perm(), err)
	}
	// A directory in the way: the rename fails.
	blocked := filepath.Join(dir, "blocked")
	if err := os.MkdirAll(filepath.Join(blocked, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicWriteFile(blocked, []byte("x"), 0o644); err == nil {
		t.Fatal("a write over a non-empty directory succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("left behind: %v", entries)
	}
}
