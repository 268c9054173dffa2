package shim

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/process"
)

// hold is a running tracer holding one container's init.
type hold struct {
	cmd     *exec.Cmd
	release io.WriteCloser
	// exiting is closed when init starts to exit (and is held); done when the tracer has exited.
	exiting chan struct{}
	done    <-chan struct{}
	// startup is how long the tracer took from its start until it traced every thread of init.
	startup time.Duration
	// autoreap: init was made to ignore SIGCHLD on its way to exit (helper.Autoreap);
	// autoreapFailure says why that failed. Both are set before exiting is closed.
	autoreap        bool
	autoreapFailure string
}

// holdAttachTimeout bounds how long the tracer may take to attach to init.
const holdAttachTimeout = 5 * time.Second

// startHold starts the tracer for init and returns once it traces every thread of init. The
// tracer gets init's pidfd, and seizes init only while that pidfd still refers to it.
func startHold(init *process.Handle) (*hold, error) {
	pidfd, err := unix.FcntlInt(uintptr(init.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the pidfd of init %d: %w", init.Pid, err)
	}
	pidfdFile := os.NewFile(uintptr(pidfd), "init-pidfd")
	defer pidfdFile.Close()
	started := time.Now()
	cmd := tracerCommand(init.Pid)
	cmd.ExtraFiles = []*os.File{pidfdFile}
	stdin, stdout, done, err := startHelper(cmd)
	if err != nil {
		return nil, fmt.Errorf("start the tracer: %w", err)
	}
	h := &hold{cmd: cmd, release: stdin, exiting: make(chan struct{}), done: done}
	attached := make(chan error, 1)
	go func() {
		defer stdout.Close()
		h.readTracer(stdout, attached)
	}()
	select {
	case err := <-attached:
		if err != nil {
			h.killNow()
			return nil, err
		}
		h.startup = time.Since(started)
		return h, nil
	case <-time.After(holdAttachTimeout):
		h.killNow()
		return nil, fmt.Errorf("the tracer did not attach within %s", holdAttachTimeout)
	}
}

// readTracer follows the tracer's messages; attached gets one value (nil: attached), read or not.
func (h *hold) readTracer(stdout io.Reader, attached chan<- error) {
	reported, exiting := false, false
	sc := bufio.NewScanner(stdout)
	failure := errors.New("the tracer exited before attaching")
	for sc.Scan() {
		switch line := sc.Text(); {
		case line == helper.Attached && !reported:
			attached <- nil
			reported = true
		case line == helper.Autoreap:
			h.autoreap = true
		case strings.HasPrefix(line, helper.AutoreapFailed):
			h.autoreapFailure = strings.TrimSpace(strings.TrimPrefix(line, helper.AutoreapFailed))
		case line == helper.Exiting && !exiting:
			close(h.exiting)
			exiting = true
		case strings.HasPrefix(line, helper.Failed):
			failure = errors.New(strings.TrimSpace(strings.TrimPrefix(line, helper.Failed)))
		}
	}
	if !reported {
		attached <- failure
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

// holdKillAfter bounds how long kill waits for the tracer to end on its own before it SIGKILLs it.
const holdKillAfter = time.Second

// kill closes the tracer's input and waits for it to end, SIGKILLing it after holdKillAfter. Mid
// autoreap it ends only once init's registers are restored: a SIGKILL then would leave init with
// the injected call's registers.
func (h *hold) kill() {
	h.release.Close()
	select {
	case <-h.done:
	case <-time.After(holdKillAfter):
		h.cmd.Process.Kill()
		<-h.done
	}
}

// killNow SIGKILLs a tracer that has not attached (so rewrites nothing yet) and waits for it.
func (h *hold) killNow() {
	h.cmd.Process.Kill()
	h.release.Close()
	<-h.done
}

// abort is kill without waiting for the tracer (a SIGKILL of the container is under way).
func (h *hold) abort() { go h.kill() }

// attachedTracer is the outcome of a tracer started aside: the hold, or why there is none.
type attachedTracer struct {
	h   *hold
	err error
}

// startTracer starts the tracer for init aside (startHold) and returns where its outcome comes.
func startTracer(init *process.Handle) <-chan attachedTracer {
	ch := make(chan attachedTracer, 1)
	go func() {
		h, err := startHold(init)
		ch <- attachedTracer{h, err}
	}()
	return ch
}

// awaitTracer waits for a tracer started by startTracer to attach.
func awaitTracer(tracer <-chan attachedTracer) (*hold, error) {
	if tracer == nil {
		return nil, errors.New("no tracer was started")
	}
	a := <-tracer
	return a.h, a.err
}

// discardTracer ends, aside, a tracer the stop does not use; the channel closes once it is gone.
// Init must not be signalled before: the kernel's implicit detach on the tracer's exit can drop it.
func discardTracer(tracer <-chan attachedTracer) <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		if a := <-tracer; a.h != nil {
			a.h.kill()
		}
	}()
	return gone
}
