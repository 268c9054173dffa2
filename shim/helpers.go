package shim

// Starting the helper processes: the tracer and the signaller (package helper, run by
// graceful-hold), and the lookup of a container's recorded stop signal (the shim binary itself).

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
)

// HoldCommand is the argument with which the shim binary re-executes itself as the tracer that
// holds a container's init at exit, when graceful-hold is not installed next to it. The tracer runs
// in its own process because the shim's reaper waits for every child and would steal the
// tracer's ptrace stops.
const HoldCommand = "hold-init"

// HoldBinary is the tracer's own small binary (cmd/graceful-hold), looked up next to the shim's
// binary. It starts in about a millisecond; re-executing the 40 MB shim instead runs every
// containerd, gRPC and otel package's initialisation again (tens of milliseconds).
const HoldBinary = "graceful-hold"

// tracerCommand returns the command that runs the tracer for init pid (helper.RunTracer).
func tracerCommand(pid int) *exec.Cmd { return helperCommand(strconv.Itoa(pid)) }

// signallerCommand returns the command that runs the signaller for the PID namespace whose inode
// is ns (helper.SignallerMain); it must be started from a thread in that namespace.
func signallerCommand(ns uint64) *exec.Cmd {
	return helperCommand(helper.SignallerArg, strconv.FormatUint(ns, 10))
}

// lookupCommand returns the command that looks up container id's recorded stop signal
// (StopSignalMain): the shim binary itself, since the lookup needs containerd's API.
func lookupCommand(address, ns, id string) *exec.Cmd {
	return exec.Command("/proc/self/exe", StopSignalCommand, address, ns, id)
}

// helperCommand returns the command that runs graceful-hold with args: graceful-hold next to the
// shim when it is there, else the shim binary itself in HoldCommand mode.
func helperCommand(args ...string) *exec.Cmd {
	if exe, err := os.Executable(); err == nil {
		helper := filepath.Join(filepath.Dir(exe), HoldBinary)
		if unix.Access(helper, unix.X_OK) == nil {
			return exec.Command(helper, args...)
		}
	}
	return exec.Command("/proc/self/exe", append([]string{HoldCommand}, args...)...)
}

// StopSignalCommand is the argument with which the shim binary re-executes itself to look up a
// container's recorded stop signal (StopSignalMain). The lookup runs in a process of its own so
// that the gRPC client, its buffers and the containers API's descriptors never enter the
// long-lived shim: in-process they stayed in its heap, about 0.4 MiB of every idle shim.
const StopSignalCommand = "recorded-stop-signal"

// startHelper starts a helper (the tracer, the signaller) with the shim's reaper and returns its
// standard input, its standard output, which the caller reads to EOF and closes, and a channel
// closed once the helper has exited and been reaped. The output is a pipe of the shim's own:
// exec.Cmd's StdoutPipe would not do, since the reaper's Wait closes it as soon as the helper is
// reaped, which can be before its last line is read (a signaller exits right after its answer).
func startHelper(cmd *exec.Cmd) (in io.WriteCloser, out *os.File, done <-chan struct{}, err error) {
	if in, err = cmd.StdinPipe(); err != nil {
		return nil, nil, nil, err
	}
	out, w, err := os.Pipe()
	if err != nil {
		in.Close()
		return nil, nil, nil, fmt.Errorf("output pipe: %w", err)
	}
	cmd.Stdout = w
	exits, err := reaper.Default.Start(cmd)
	w.Close() // the helper's end
	if err != nil {
		out.Close()
		return nil, nil, nil, err
	}
	exited := make(chan struct{})
	go func() {
		reaper.Default.Wait(cmd, exits)
		// The reaper waited for it, not cmd.Wait: the os.Process still holds a pidfd of the
		// helper, which the Go collector (paused during stops) would close only much later.
		cmd.Process.Release()
		close(exited)
	}()
	return in, out, exited, nil
}
