// Package helper holds the shim's helper programs, which run in processes of their own: the
// tracer, which holds a container's init at its exit while the shim drains the rest (RunTracer),
// and the signaller, which signals a container's whole PID namespace from inside it
// (SignallerMain). cmd/graceful-hold runs them, and the shim binary does when graceful-hold is
// not installed. The package imports no containerd code, so graceful-hold starts in about a
// millisecond.
package helper

import (
	"fmt"
	"os"
	"strconv"
)

// Main is the helper programs' main: with SignallerArg first it runs the signaller
// (SignallerMain), else the tracer for the PID in args, whose pidfd is on TracerPidfd (RunTracer,
// with its messages on standard output). It returns the process's exit status.
func Main(args []string) int {
	if len(args) > 0 && args[0] == SignallerArg {
		return SignallerMain(args[1:], os.Stdin, os.Stdout)
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: graceful-hold PID (with a pidfd of PID on descriptor 3)")
		return 2
	}
	pid, err := strconv.Atoi(args[0])
	if err != nil || pid <= 0 {
		fmt.Fprintf(os.Stdout, "%s want a PID, got %q\n", Failed, args[0])
		return 2
	}
	if err := RunTracer(pid, TracerPidfd, os.Stdin, os.Stdout); err != nil {
		return 1
	}
	return 0
}
