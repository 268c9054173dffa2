package cri

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Container is a started container of a pod.
type Container struct {
	ID, Name string
	OutDir   string // host side of /out
	Log      string // its CRI log file
}

// WaitFile waits until the container wrote /out/name; it fails tb, with the container's log, when
// that takes over 20s.
func (c *Container) WaitFile(tb testing.TB, name string) {
	tb.Helper()
	if err := stack.WaitFile(filepath.Join(c.OutDir, name), 20*time.Second); err != nil {
		data, _ := os.ReadFile(c.Log)
		tb.Fatalf("container %s: %v; its log:\n%s", c.Name, err, data)
	}
}

// Marker returns the content of /out/name, or "" when the container did not write it.
func (c *Container) Marker(name string) string { return stack.ReadMarker(c.OutDir, name) }
