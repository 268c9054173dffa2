package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/graceful-shim/graceful/integration/stack"
)

// buildLeaderless builds testdata/leaderless (static, for the busybox image) into a directory
// to bind-mount at /leaderless.
func buildLeaderless(t *testing.T) string {
	t.Helper()
	return buildStatic(t, "leaderless", filepath.Join("testdata", "leaderless", "leaderless.c"))
}

// buildStatic builds the C program src, static (for the busybox image), as name into a
// directory of its own, and returns the directory.
func buildStatic(t *testing.T, name, src string) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to build %s (make stack installs it): %v", src, err)
	}
	dir := t.TempDir()
	out, err := exec.Command(gcc, "-static", "-O2", "-Wall", "-pthread", "-o", filepath.Join(dir, name), src).CombinedOutput()
	if err != nil {
		t.Fatalf("build %s: %v\n%s", src, err, out)
	}
	return dir
}

// A container that shares a PID namespace (a joined one, the host's) has a process whose main
// thread has exited while another thread runs on: the stop drains it too (its TERM handler runs).
// Its container is found by cgroup there, and cgroup v1 shows such a process in the root of every
// v1 hierarchy (cgroup v2 keeps its cgroup).
func TestSharedPIDProcessWithExitedMainThreadIsDrained(t *testing.T) {
	bin := buildLeaderless(t)
	owner := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: "echo ready; " + loop})
	script := `trap "exit 0" TERM
/leaderless/leaderless /out/leaderless &
` + loop
	for _, tc := range []struct {
		name string
		spec stack.Spec
	}{
		{"joined-namespace", stack.Spec{PIDNamespace: fmt.Sprintf("/proc/%d/ns/pid", owner.Task.Pid())}},
		{"host-pid", stack.Spec{HostPID: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range []string{"init-first", "children-first"} {
				spec := tc.spec
				spec.ID = fmt.Sprintf("leaderless-%s-%s-%d", tc.name, order, seq.Add(1))
				spec.Runtime = stack.GracefulRuntime
				spec.Script = script
				spec.Annotations = orderAnnotation(order)
				spec.Mounts = []specs.Mount{{Destination: "/leaderless", Type: "bind", Source: bin, Options: []string{"rbind", "ro"}}}
				c := startUntil(t, spec, "leaderless ready")
				stopExpect(t, c, 15*time.Second, exitOK)
				if got := c.Marker("leaderless"); got != "term" {
					t.Errorf("%s: the process whose main thread exited was not drained (marker %q)", order, got)
				}
			}
		})
	}
}
