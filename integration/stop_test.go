package integration

import (
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// childTraps is a child that takes 300ms to clean up on TERM, then writes /out/<name>.
func childTraps(name string) string {
	return `sh -c 'trap "sleep 0.3; echo clean > /out/` + name + `; exit 0" TERM; while :; do sleep 0.05; done' &
`
}

// The seed case: init traps TERM and exits; its child traps TERM. The stock shim's stop zaps the
// child mid-cleanup; graceful lets its handler finish.
func TestSeedCaseChildHandlerRuns(t *testing.T) {
	script := childTraps("child") + `trap "exit 0" TERM
echo ready
while :; do sleep 0.05; done`
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			c := start(t, stack.Spec{Runtime: runtime, Script: script})
			took := stop(t, c, 15*time.Second)
			got := c.Marker("child")
			t.Logf("%s: stop took %v, child marker %q", short(runtime), took, got)
			if runtime == stack.StockRuntime && got != "" {
				t.Fatalf("stock shim: child handler completed (%q), expected the zap to kill it", got)
			}
			if runtime == stack.GracefulRuntime && got != "clean" {
				t.Fatalf("graceful: child handler did not complete")
			}
		})
	}
}
