package process

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Messages a holder writes, one per line.
const (
	// HoldAttached: every thread of init is traced; the stop signal can be sent.
	HoldAttached = "attached"
	// HoldExiting: init has begun to exit and is held before its PID namespace is torn down.
	HoldExiting = "exiting"
	// HoldError prefixes a fatal error; the holder exits after it, which releases init.
	HoldError = "error"
)

// RunHolder traces every thread of process pid (PTRACE_SEIZE with PTRACE_O_TRACEEXIT and
// PTRACE_O_TRACECLONE) and holds the process when it starts to exit, inside the kernel's exit path
// and before exit_notify, so that while it is held the rest of its PID namespace is still alive and
// can be drained. Every signal-delivery-stop is passed straight through.
//
// It writes HoldAttached once all threads are traced and HoldExiting when the first thread stops
// at exit, each on its own line to out. It returns, which ends the tracer and so lets the kernel
// detach and release every thread, when in yields a line "release" or reaches EOF. It must run
// in a process of its own: ptrace stops are reported through wait, which the caller must not
// share with another reaper. If the process running it dies, the kernel detaches all the same.
func RunHolder(pid int, in io.Reader, out io.Writer) error {
	runtime.LockOSThread() // every ptrace request must come from the tracing thread
	children := make(chan os.Signal, 16)
	signal.Notify(children, unix.SIGCHLD)
	release := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() && sc.Text() != "release" {
		}
		close(release)
	}()

	h := &holder{pid: pid, threads: map[int]bool{}, out: out}
	if err := h.attach(); err != nil {
		fmt.Fprintf(out, "%s %v\n", HoldError, err)
		return err
	}
	fmt.Fprintln(out, HoldAttached)
	for {
		select {
		case <-release:
			return nil
		case <-children:
			if h.reap() {
				return nil // every thread is gone: nothing left to hold
			}
		}
	}
}

type holder struct {
	pid     int
	threads map[int]bool // traced thread ids
	exiting bool
	out     io.Writer
}

const traceOptions = unix.PTRACE_O_TRACEEXIT | unix.PTRACE_O_TRACECLONE

// attach seizes every thread of the process, listing its tasks until no new thread shows up.
func (h *holder) attach() error {
	for {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", h.pid))
		if err != nil {
			return fmt.Errorf("list threads of %d: %w", h.pid, err)
		}
		added := 0
		for _, e := range entries {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || h.threads[tid] {
				continue
			}
			if _, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(tid), 0, traceOptions, 0, 0); errno != 0 {
				if errno == unix.ESRCH {
					continue // the thread exited meanwhile
				}
				return fmt.Errorf("ptrace seize thread %d of %d: %w", tid, h.pid, errno)
			}
			h.threads[tid] = true
			added++
		}
		if added == 0 {
			if len(h.threads) == 0 {
				return fmt.Errorf("process %d has no thread left to trace", h.pid)
			}
			return nil
		}
	}
}

// reap handles every ptrace stop and thread exit pending now. It reports whether no traced
// thread is left.
func (h *holder) reap() bool {
	for {
		var ws unix.WaitStatus
		tid, err := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || tid <= 0 {
			return len(h.threads) == 0
		}
		switch {
		case ws.Exited() || ws.Signaled():
			delete(h.threads, tid)
		case ws.Stopped():
			h.stopped(tid, ws)
		}
	}
}

func (h *holder) stopped(tid int, ws unix.WaitStatus) {
	sig := ws.StopSignal()
	switch event := int(uint32(ws)>>16) & 0xff; event {
	case unix.PTRACE_EVENT_EXIT:
		// Hold: the thread stays stopped until the tracer goes away.
		if !h.exiting {
			h.exiting = true
			fmt.Fprintln(h.out, HoldExiting)
		}
	case unix.PTRACE_EVENT_CLONE:
		if msg, err := unix.PtraceGetEventMsg(tid); err == nil {
			h.threads[int(msg)] = true
		}
		unix.PtraceCont(tid, 0)
	case unix.PTRACE_EVENT_STOP:
		h.threads[tid] = true // a new thread's first stop, or a group-stop
		if sig == unix.SIGSTOP || sig == unix.SIGTSTP || sig == unix.SIGTTIN || sig == unix.SIGTTOU {
			unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_LISTEN, uintptr(tid), 0, 0, 0, 0)
		} else {
			unix.PtraceCont(tid, 0)
		}
	case 0:
		// A signal-delivery-stop: deliver the signal as if nobody were tracing.
		unix.PtraceCont(tid, int(sig))
	default:
		unix.PtraceCont(tid, 0)
	}
}
