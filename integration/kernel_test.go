//go:build kernelemu

package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Tests that need a shim built with the kernelemu tag (make test-kernel-emulated), which behaves as
// on the kernel release GRACEFUL_EMULATE_KERNEL names.

// On a kernel without pidfd_open (5.2, emulated), Create fails with an error that names the
// missing feature, the release that brings it and what to do, where every stop would otherwise
// quietly be the stock shim's; the stock runtime on the same daemon still runs the container.
func TestCreateRefusedBelowTheMinimumKernel(t *testing.T) {
	ctx := context.Background()
	s, err := stack.Start(ctx, stack.Options{Env: []string{"GRACEFUL_EMULATE_KERNEL=5.2", "GRACEFUL_CONFIG_FILE=" + defaultsFile}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	c, err := s.Run(ctx, stack.Spec{ID: "below-minimum-kernel", Runtime: stack.GracefulRuntime, Script: "echo ready; " + loop})
	if err == nil {
		c.Delete()
		t.Fatal("Create succeeded on an emulated 5.2 kernel")
	}
	for _, want := range []string{"pidfd_open", "Linux 5.3 or later", "io.containerd.runc.v2"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Create's error %q does not say %q", err, want)
		}
	}
	t.Logf("Create: %v", err)
	stock, err := s.Run(ctx, stack.Spec{ID: "below-minimum-kernel-stock", Runtime: stack.StockRuntime, Script: "echo ready; " + loop})
	if err != nil {
		t.Fatalf("the stock runtime: %v", err)
	}
	if err := stock.Output.WaitLine("ready", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := stock.Delete(); err != nil {
		t.Fatal(err)
	}
}

// The shims of a kernelemu run behave as the emulated release (they say so in containerd's log),
// so that the suites run under it do exercise the fallbacks.
func TestShimsBehaveAsTheEmulatedKernel(t *testing.T) {
	want := os.Getenv("GRACEFUL_EMULATE_KERNEL")
	if want == "" {
		t.Fatal("set GRACEFUL_EMULATE_KERNEL (make test-kernel-emulated)")
	}
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: "echo ready; " + loop})
	stopExpect(t, c, 15*time.Second, exitSIGKILL, exitSIGTERM)
	if line := "behaving as Linux " + want; !strings.Contains(theStack.Log(), line) {
		t.Fatalf("containerd's log has no %q from the shim", line)
	}
}
