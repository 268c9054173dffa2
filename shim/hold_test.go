package shim

import (
	"bufio"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/process"
)

// The tracer's messages are read to the end even when nobody waits for the attach result any
// more (startHold gave up after its timeout): the reader must not block on a second result.
func TestTracerReaderNeverBlocksOnALateAttach(t *testing.T) {
	h := &hold{exiting: make(chan struct{}), done: make(chan struct{})}
	messages := strings.NewReader(helper.Attached + "\n" + helper.Exiting + "\n")
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

// A hold aborted (the container's SIGKILL: docker stop -t 0) while the tracer rewrites init's exit
// syscall lets the tracer put init's registers and stack back first: init exits with the status
// it asked for, not with the injected call's registers (17, or a fault).
func TestHoldAbortedDuringTheInjectionLetsInitExitAsItAsked(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "injecting")
	t.Setenv(holdDelayEnv, mark)
	runReaper(t) // as the shim's main does: the tracer is reaped by the shim's reaper
	init := exec.Command("sh", "-c", `trap "exit 5" TERM; echo ready; while :; do sleep 0.05; done`)
	init.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := init.StdoutPipe()
	exits, err := reaper.Default.Start(init)
	if err != nil {
		t.Fatal(err)
	}
	status := make(chan int, 1)
	go func() {
		code, _ := reaper.Default.Wait(init, exits)
		status <- code
	}()
	t.Cleanup(func() { init.Process.Kill() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("init said %q", line)
	}
	handle, err := process.Open(init.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer handle.Close()
	h, err := startHold(handle)
	if err != nil {
		t.Fatal(err)
	}
	init.Process.Signal(syscall.SIGTERM)
	// The tracer writes the mark inside the injection window (holdDelay long).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(mark); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tracer never rewrote init's exit syscall")
		}
	}
	h.abort()
	select {
	case code := <-status:
		if code != 5 {
			t.Fatalf("init ended with status %d, want its own exit status 5", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("init did not exit after the hold was aborted")
	}
	<-h.done
}

// runReaper reaps children on SIGCHLD until the test ends, as the shim's main does (reaper.Reap).
func runReaper(t *testing.T) {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, unix.SIGCHLD)
	stop := make(chan struct{})
	t.Cleanup(func() { signal.Stop(sigs); close(stop) })
	go func() {
		for {
			select {
			case <-sigs:
				reaper.Reap()
			case <-stop:
				return
			}
		}
	}()
}
