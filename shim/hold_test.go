package shim

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/process"
)

// The tracer's messages are read to the end even when nobody waits for the attach result any
// more (startHold gave up after its timeout): the reader must not block on a second result.
func TestTracerReaderNeverBlocksOnALateAttach(t *testing.T) {
	h := &hold{exiting: make(chan struct{}), done: make(chan struct{})}
	messages := strings.NewReader(process.HoldAttached + "\n" + process.HoldExiting + "\n")
	returned := make(chan struct{})
	go func() {
		h.readTracer(messages, make(chan error, 1)) // buffered for one result, as startHold's
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("the tracer reader blocked after the tracer had attached and exited")
	}
	select {
	case <-h.exiting:
	default:
		t.Fatal("the tracer's exiting message was not passed on")
	}
}

// The tracer is graceful-hold when it is installed next to the shim, and the shim binary itself
// in its tracer mode when it is not.
func TestTracerCommandPrefersGracefulHoldNextToTheShim(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(filepath.Dir(exe), HoldBinary)
	if _, err := os.Stat(helper); err == nil {
		t.Fatalf("%s exists already", helper)
	}
	if got := tracerCommand(42).Args; !slices.Equal(got, []string{"/proc/self/exe", HoldCommand, "42"}) {
		t.Errorf("without graceful-hold: tracer %q, want the shim binary's own tracer mode", got)
	}
	if err := os.WriteFile(helper, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(helper)
	if cmd := tracerCommand(42); cmd.Path != helper || !slices.Equal(cmd.Args[1:], []string{"42"}) {
		t.Errorf("with graceful-hold next to the shim: tracer %s %q, want %s 42", cmd.Path, cmd.Args, helper)
	}
}
