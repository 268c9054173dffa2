package integration

import (
	"path/filepath"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Tests of graceful-init on its own: an image's ENTRYPOINT ["graceful-init", "--", ...], where no
// shim knows of it and it drains the container itself.

// standaloneInitAt is where the tests bind-mount the stack's graceful-init, as an image would
// carry it.
const standaloneInitAt = "/dev/.graceful-init-entrypoint"

// standaloneInitSpec runs script under graceful-init as the container's entrypoint.
func standaloneInitSpec(runtime, script string, opts ...string) stack.Spec {
	args := append([]string{standaloneInitAt}, opts...)
	args = append(args, "--", "sh", "-c", script)
	return stack.Spec{Runtime: runtime, Args: args, Mounts: []specs.Mount{{
		Destination: standaloneInitAt, Type: "bind", Source: filepath.Join(theStack.Dir, "bin", "graceful-init"),
		Options: []string{"bind", "ro", "nosuid", "nodev"},
	}}}
}

// The main process exits 3 by itself while a helper it started needs 0.3 s to flush on TERM: as
// the entrypoint, graceful-init drains the helper and exits with 3, under the stock shim (where
// tini would exit at once and the kernel SIGKILL the helper) and under graceful alike.
func TestStandaloneInitDrainsWhenMainExits(t *testing.T) {
	script := childTraps("helper") + `echo ready
while [ ! -e /out/go ]; do sleep 0.05; done
exit 3`
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			c := start(t, standaloneInitSpec(runtime, script))
			waitTrapped(t, c, "helper")
			took := releaseMain(t, c, 3)
			if got := c.Marker("helper"); got != "clean" {
				t.Fatalf("the helper's TERM handler did not complete: marker %q", got)
			}
			// The helper's 0.3 s, not the 10 s grace.
			if took > 5*time.Second {
				t.Fatalf("the container took %v to exit", took)
			}
		})
	}
}

// A stop (TERM to the container's init) goes to the main process, which exits; graceful-init then
// drains its helper and exits with main's 0, under the stock shim and under graceful.
func TestStandaloneInitStop(t *testing.T) {
	script := childTraps("helper") + `trap "exit 0" TERM; echo ready; ` + loop
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			c := start(t, standaloneInitSpec(runtime, script))
			waitTrapped(t, c, "helper")
			took := stopExpect(t, c, 15*time.Second, exitOK)
			if got := c.Marker("helper"); got != "clean" {
				t.Fatalf("the helper's TERM handler did not complete: marker %q", got)
			}
			if took > 5*time.Second {
				t.Fatalf("the stop took %v", took)
			}
		})
	}
}

// A helper that ignores TERM is SIGKILLed at the end of the grace that -t sets, and the container
// exits with the main process's status then: not at once (the kernel's zap) and not at the
// client's timeout.
func TestStandaloneInitGraceEnds(t *testing.T) {
	script := ignoringChild + `echo ready
while [ ! -e /out/go ]; do sleep 0.05; done
exit 5`
	c := start(t, standaloneInitSpec(stack.StockRuntime, script, "-t", "1s"))
	waitTrapped(t, c, "ignoring")
	took := releaseMain(t, c, 5)
	if took < 900*time.Millisecond || took > 6*time.Second {
		t.Fatalf("the container exited %v after main, want the 1 s grace", took)
	}
}
