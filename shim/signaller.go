package shim

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/process"
)

// signaller is a process.Signaller: graceful-hold -signal-all, run inside the container's PID
// namespace, which signals the whole namespace with one kill(-1) when asked. It serves one
// request: a drain signals the namespace at once only once, and the signaller, as a process of the
// namespace, must be gone before init's exit can complete (the kernel's zap waits for every process
// of the namespace), so it is let go as soon as it has answered, while the drain goes on.
type signaller struct {
	started chan struct{} // closed once the process is started (or could not be: err)
	err     error
	cmd     *exec.Cmd
	in      io.WriteCloser
	replies chan string     // the signaller's lines, closed when its output ends
	done    <-chan struct{} // closed once it has exited and been reaped
	ready   bool
	closing sync.Once
}

// signallerTimeout bounds the wait for the signaller to start and to answer one request.
const signallerTimeout = 5 * time.Second

// startSignaller starts the signaller in the PID namespace of init, whose inode is ns, without
// waiting: it gets ready while the stop goes on (the tracer's start, init's own exit).
//
// The signaller is forked by a thread that has entered init's PID namespace for its children
// (setns through init's pidfd, which cannot refer to a recycled PID). The thread then goes back to
// the shim's own namespace; should that fail, its goroutine ends locked to it, so that the Go
// runtime ends the thread rather than let another goroutine fork from it.
func startSignaller(init *process.Handle, ns uint64) *signaller {
	s := newSignaller()
	go func() {
		defer close(s.started)
		own, err := unix.Open("/proc/thread-self/ns/pid_for_children", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			s.err = fmt.Errorf("open the shim's PID namespace: %w", err)
			return
		}
		defer unix.Close(own)
		runtime.LockOSThread()
		if err := unix.Setns(init.Fd(), unix.CLONE_NEWPID); err != nil {
			runtime.UnlockOSThread() // unchanged
			s.err = fmt.Errorf("enter the PID namespace of init %d: %w", init.Pid, err)
			return
		}
		s.err = s.spawn(ns)
		if unix.Setns(own, unix.CLONE_NEWPID) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return s
}

func newSignaller() *signaller {
	return &signaller{started: make(chan struct{}), replies: make(chan string, 4)}
}

// spawn starts the signaller command from the calling thread.
func (s *signaller) spawn(ns uint64) error {
	return s.run(signallerCommand(ns))
}

// run starts cmd as the signaller and follows its replies and its exit.
func (s *signaller) run(cmd *exec.Cmd) error {
	s.cmd = cmd
	in, out, done, err := startHelper(cmd)
	if err != nil {
		return fmt.Errorf("start the signaller: %w", err)
	}
	s.in, s.done = in, done
	go func() {
		defer out.Close()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.replies <- sc.Text()
		}
		close(s.replies)
	}()
	return nil
}

// wait waits for the start, and returns why it failed.
func (s *signaller) wait() error {
	select {
	case <-s.started:
		return s.err
	case <-time.After(signallerTimeout):
		return fmt.Errorf("the signaller did not start within %s", signallerTimeout)
	}
}

// Pid is the signaller's PID in the shim's namespace (0 when it did not start).
func (s *signaller) Pid() int {
	if s.wait() != nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// SignalAll asks the signaller to signal the namespace and waits for its answer.
func (s *signaller) SignalAll(sig unix.Signal) (process.SignalWindow, error) {
	if err := s.wait(); err != nil {
		return process.SignalWindow{}, err
	}
	timer := time.NewTimer(signallerTimeout)
	defer timer.Stop()
	if !s.ready {
		line, err := s.reply(timer)
		if err != nil {
			return process.SignalWindow{}, err
		}
		if line != helper.SignallerReady {
			_, _, err := helper.ParseSignalled(line)
			return process.SignalWindow{}, fmt.Errorf("the signaller did not start: %w", err)
		}
		s.ready = true
	}
	if _, err := fmt.Fprintf(s.in, "%d\n", int(sig)); err != nil {
		return process.SignalWindow{}, fmt.Errorf("signaller: %w", err)
	}
	line, err := s.reply(timer)
	s.close() // its one request is served
	if err != nil {
		return process.SignalWindow{}, err
	}
	from, to, err := helper.ParseSignalled(line)
	return process.SignalWindow{From: from, To: to}, err
}

func (s *signaller) reply(timer *time.Timer) (string, error) {
	select {
	case line, ok := <-s.replies:
		if !ok {
			return "", errors.New("the signaller exited")
		}
		return line, nil
	case <-timer.C:
		return "", fmt.Errorf("the signaller did not answer within %s", signallerTimeout)
	}
}

// close ends the signaller: EOF on its input, and SIGKILL if it is still there a moment later.
// It does not wait for the process to go. Only the first call does anything.
func (s *signaller) close() {
	s.closing.Do(s.end)
}

func (s *signaller) end() {
	go func() {
		if s.wait() != nil {
			return
		}
		s.in.Close()
		select {
		case <-s.done:
		case <-time.After(signallerTimeout):
			s.cmd.Process.Kill()
		}
	}()
}
