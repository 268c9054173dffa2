package stack

import (
	"os"
	"path/filepath"
	"testing"
)

// The tools that the opt-in tests drive (dockerd, the Kubernetes binaries, nerdctl, critest) are
// installed into the stack cache by an install-*.sh script of this directory, each named after
// its version, which an environment variable may choose.

// ToolVersion returns the value of the environment variable env, or def when it is empty.
func ToolVersion(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

// Tool returns the path of the binary name-version in the stack cache; it fails tb, naming the
// script installer that installs it, when it is missing.
func Tool(tb testing.TB, name, version, installer string) string {
	tb.Helper()
	bin := filepath.Join(StackDir(), "bin", name+"-"+version)
	if _, err := os.Stat(bin); err != nil {
		tb.Fatalf("%s is not installed (bash integration/stack/%s): %v", name, installer, err)
	}
	return bin
}
