package shim

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"

	"github.com/graceful-shim/graceful/process"
)

// HoldCommand is the argument with which the shim binary re-executes itself as the tracer that
// holds a container's init at exit (see process.RunHolder). It runs in its own process because
// the shim's reaper waits for every child and would steal the tracer's ptrace stops.
const HoldCommand = "hold-init"

// RunHold is the tracer process's main: it holds process pid until stdin says release or closes.
func RunHold(pid string) error {
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 {
		return fmt.Errorf("%s: want a PID, got %q", HoldCommand, pid)
	}
	return process.RunHolder(n, os.Stdin, os.Stdout)
}

// hold is a running tracer holding one container's init.
type hold struct {
	cmd     *exec.Cmd
	release io.WriteCloser
	// exiting is closed when init starts to exit (and is held); done when the tracer has exited.
	exiting, done chan struct{}
}

// holdAttachTimeout bounds how long the tracer may take to attach to init.
const holdAttachTimeout = 5 * time.Second

// startHold starts the tracer for init pid and returns once it traces every thread of init.
func startHold(pid int) (*hold, error) {
	cmd := exec.Command("/proc/self/exe", HoldCommand, strconv.Itoa(pid))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	exits, err := reaper.Default.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start the tracer: %w", err)
	}
	h := &hold{cmd: cmd, release: stdin, exiting: make(chan struct{}), done: make(chan struct{})}
	attached := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		failure := errors.New("the tracer exited before attaching")
		for sc.Scan() {
			switch line := sc.Text(); {
			case line == process.HoldAttached:
				attached <- nil
			case line == process.HoldExiting:
				close(h.exiting)
			case strings.HasPrefix(line, process.HoldError):
				failure = errors.New(strings.TrimSpace(strings.TrimPrefix(line, process.HoldError)))
			}
		}
		attached <- failure
	}()
	go func() {
		reaper.Default.Wait(cmd, exits)
		close(h.done)
	}()
	select {
	case err := <-attached:
		if err != nil {
			h.kill()
			return nil, err
		}
		return h, nil
	case <-time.After(holdAttachTimeout):
		h.kill()
		return nil, fmt.Errorf("the tracer did not attach within %s", holdAttachTimeout)
	}
}

// Release lets init finish exiting and waits for the tracer to go.
func (h *hold) Release() {
	h.release.Close()
	select {
	case <-h.done:
	case <-time.After(holdAttachTimeout):
		h.kill()
	}
}

// kill ends the tracer at once; the kernel detaches it from init.
func (h *hold) kill() {
	h.cmd.Process.Kill()
	h.release.Close()
	<-h.done
}
