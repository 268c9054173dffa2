// Package integration tests the graceful shim against a real containerd and runc, side by side
// with containerd's stock runc shim.
package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/internal/testguard"
)

// theStack is shared by every test in the package: one daemon, many containers.
var theStack *stack.Stack

// defaultsFile is the host defaults file the daemon's shims read (GRACEFUL_CONFIG_FILE); tests
// that need host defaults write it and remove it again.
var defaultsFile string

func TestMain(m *testing.M) {
	for _, r := range testguard.SweepStacks() {
		fmt.Fprintln(os.Stderr, "testguard:", r)
	}
	os.Exit(testguard.Run(func() int { return run(m) }))
}

func run(m *testing.M) int {
	ctx := context.Background()
	f, err := os.CreateTemp("", "graceful-defaults-*.toml")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defaultsFile = f.Name()
	f.Close()
	os.Remove(defaultsFile)
	defer os.Remove(defaultsFile)
	env := []string{"GRACEFUL_CONFIG_FILE=" + defaultsFile}
	if dir := os.Getenv("GRACEFUL_CPUPROFILE_DIR"); dir != "" {
		env = append(env, "GRACEFUL_CPUPROFILE_DIR="+dir)
	}
	s, err := stack.Start(ctx, stack.Options{Env: env})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the stack:", err)
		return 1
	}
	theStack = s
	code := m.Run()
	if code != 0 {
		log := s.Log()
		if err := os.WriteFile(os.TempDir()+"/graceful-containerd.log", []byte(log), 0o644); err == nil {
			fmt.Fprintln(os.Stderr, "containerd log saved to", os.TempDir()+"/graceful-containerd.log")
		}
		fmt.Fprintln(os.Stderr, "--- containerd log (tail) ---")
		if len(log) > 20000 {
			log = log[len(log)-20000:]
		}
		fmt.Fprintln(os.Stderr, log)
	}
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close the stack:", err)
		return 1
	}
	return code
}

var seq atomic.Int64

// stackContext is a context in the stack's containerd namespace.
func stackContext() context.Context {
	return namespaces.WithNamespace(context.Background(), stack.Namespace)
}

// runtimes is the stock runtime and graceful, in that order.
var runtimes = []string{stack.StockRuntime, stack.GracefulRuntime}

func short(runtime string) string {
	if runtime == stack.StockRuntime {
		return "stock"
	}
	return "graceful"
}

// start runs a container and waits for its script to print "ready"; it is deleted at cleanup.
func start(t *testing.T, spec stack.Spec) *stack.Container {
	t.Helper()
	return startUntil(t, spec, "ready")
}

// startUntil is start, waiting for the line ready instead.
func startUntil(t *testing.T, spec stack.Spec, ready string) *stack.Container {
	t.Helper()
	return startWaiting(t, spec, func(o *stack.Output) error { return o.WaitLine(ready, 20*time.Second) })
}

// startWaiting is start, waiting until ready returns (an error fails the test).
func startWaiting(t *testing.T, spec stack.Spec, ready func(*stack.Output) error) *stack.Container {
	t.Helper()
	if spec.ID == "" {
		spec.ID = fmt.Sprintf("%s-%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), short(spec.Runtime), seq.Add(1))
		if len(spec.ID) > 60 {
			spec.ID = spec.ID[len(spec.ID)-60:]
		}
		spec.ID = strings.TrimLeft(spec.ID, "-_.")
	}
	c, err := theStack.Run(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Delete(); err != nil {
			t.Errorf("delete %s: %v", c.ID, err)
		}
	})
	if err := ready(c.Output); err != nil {
		t.Fatal(err)
	}
	return c
}

// stop sends SIGTERM and waits up to timeout for the container to exit, whatever its exit status.
// Prefer stopExpect where the exit status is deterministic.
func stop(t *testing.T, c *stack.Container, timeout time.Duration) time.Duration {
	t.Helper()
	took, _ := stopStatus(t, c, timeout)
	return took
}

// stopStatus sends SIGTERM, waits up to timeout for the container to exit and returns its exit
// status.
func stopStatus(t *testing.T, c *stack.Container, timeout time.Duration) (time.Duration, containerd.ExitStatus) {
	t.Helper()
	took, st, err := c.Stop(context.Background(), syscall.SIGTERM, timeout)
	if err != nil {
		t.Fatalf("stop %s: %v", c.ID, err)
	}
	if st.Error() != nil {
		t.Fatalf("stop %s: exit status: %v", c.ID, st.Error())
	}
	return took, st
}

// Exit codes of a container's init as containerd reports them.
const (
	exitOK      = 0
	exitSIGKILL = 128 + uint32(syscall.SIGKILL) // 137
	exitSIGTERM = 128 + uint32(syscall.SIGTERM) // 143
)

// stopExpect is stop, and fails the test unless init's exit code is one of want: 0 where init
// traps TERM and exits 0 (a SIGKILLed init would give 137), 137 where init is SIGKILLed.
func stopExpect(t *testing.T, c *stack.Container, timeout time.Duration, want ...uint32) time.Duration {
	t.Helper()
	took, st := stopStatus(t, c, timeout)
	if !slices.Contains(want, st.ExitCode()) {
		t.Fatalf("%s: init exited with code %d, want %v", c.ID, st.ExitCode(), want)
	}
	return took
}
