package helper

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// Messages a tracer writes, one per line.
const (
	// Attached: every thread of init is traced; the stop signal can be sent.
	Attached = "attached"
	// Exiting: init has begun to exit and is held before its PID namespace is torn down.
	Exiting = "exiting"
	// Failed prefixes a fatal error; the tracer exits after it, which releases init.
	Failed = "error"
	// Autoreap: init, entering its exit syscall, was made to ignore SIGCHLD first (autoreap),
	// so that the children that die while it is held release themselves.
	Autoreap = "autoreap"
	// AutoreapFailed prefixes why that could not be done; the hold goes on without it.
	AutoreapFailed = "autoreap-failed"
)

// autoreapSyscallBudget bounds the syscall stops a tracer spends waiting for init's exit
// syscall after init got a signal: an init whose handler makes more syscalls than this is left
// to run untraced (and its children to be reaped by the kernel's zap), so a long shutdown is
// not slowed down by two ptrace stops per syscall.
const autoreapSyscallBudget = 512

// TracerPidfd is the descriptor on which a tracer process receives init's pidfd.
const TracerPidfd = 3

// RunTracer traces every thread of process pid (PTRACE_SEIZE with PTRACE_O_TRACEEXIT and
// PTRACE_O_TRACECLONE) and holds the process when it starts to exit, inside the kernel's exit path
// and before exit_notify, so that while it is held the rest of its PID namespace is still alive and
// can be drained. Every signal-delivery-stop is passed straight through.
//
// pidfd refers to the process: it is checked after every thread is seized, so that a PID recycled
// since the caller checked it is never held (a live process keeps its PID, so a pidfd that still
// refers to a live process numbered pid proves the seized threads are that process's).
//
// A thread that ends on its own (pthread_exit, a Go thread ended by its runtime) while other
// threads live on is let go at once: only the last live thread of the process is held, since
// only its exit lets the kernel zap the namespace.
//
// A single-threaded init that gets a signal is followed syscall by syscall (at most
// autoreapSyscallBudget of them) until its exit syscall, which is turned into an autoreap first:
// see autoreap.
//
// It writes Attached once all threads are traced and Exiting when the last thread stops
// at exit, each on its own line to out. When in yields a line "release" or reaches EOF, the
// process running it exits with status 0 at once (never in the middle of an injected syscall):
// the tracer's death makes the kernel detach and release every thread, sooner than waking the
// tracing thread from its wait would. RunTracer itself returns only on an error, or once no
// traced thread is left. It must run in a process of its own, as that process's main: ptrace
// stops are reported through wait, which the caller must not share with another reaper. If the
// process running it dies, the kernel detaches all the same.
//
// The tracing thread blocks in wait4 itself, rather than waiting for SIGCHLD: each ptrace stop
// then costs one wake-up of that thread instead of a signal handler, a goroutine and a channel
// (a single-threaded init followed to its exit makes about ten stops between its signal and its
// hold).
func RunTracer(pid, pidfd int, in io.Reader, out io.Writer) error {
	raiseHelperPriority() // and every ptrace request must come from the tracing thread
	gate := &releaseGate{}
	// No exit before the attach is reported, or undone by the error: busy before the reader can
	// see an EOF (an input closed at once).
	gate.busy(true)
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() && sc.Text() != "release" {
		}
		gate.release()
	}()

	h := &tracer{pid: pid, threads: map[int]bool{}, exitLetGo: map[int]bool{}, out: out,
		syscallBudget: autoreapSyscallBudget, gate: gate}
	err := h.attach()
	if err == nil {
		err = verifyPidfd(pidfd, pid)
	}
	if err != nil {
		fmt.Fprintf(out, "%s %v\n", Failed, err)
		return err
	}
	fmt.Fprintln(out, Attached)
	gate.busy(false)
	h.follow()
	return nil // every thread is gone: nothing left to hold
}

// releaseGate ends the tracer's process on release, unless the tracing thread is in the middle of
// something that must not be cut short (an injected syscall, whose registers are still to be put
// back): then the tracing thread ends the process once it is done.
type releaseGate struct {
	mu       sync.Mutex
	released bool
	inFlight bool
}

func (g *releaseGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.released = true
	if !g.inFlight {
		os.Exit(0)
	}
}

// busy marks the start (true) or the end (false) of work that release must wait for; a release
// that came meanwhile takes effect at its end.
func (g *releaseGate) busy(b bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inFlight = b
	if !b && g.released {
		os.Exit(0)
	}
}

type tracer struct {
	pid     int
	threads map[int]bool // traced thread ids
	// exitLetGo are threads that ended on their own while others lived on: past their exit stop.
	exitLetGo map[int]bool
	exiting   bool
	out       io.Writer

	// cloned: init started a thread since it was traced, so it is not followed syscall by syscall.
	cloned bool
	// followSyscalls: init got a signal and is resumed with PTRACE_SYSCALL until its exit syscall
	// or until syscallBudget runs out.
	followSyscalls bool
	syscallBudget  int
	// autoreap is the injected rt_sigaction in flight, till its exit stop.
	autoreap *autoreap
	// restarted is the thread sent back to its exit syscall after the injection: a signal that
	// would reach it on the way (one that came meanwhile) is not delivered, since init never
	// returns from that syscall to run a handler.
	restarted int
	// gate holds a release back while autoreap is in flight.
	gate *releaseGate
}

// verifyPidfd checks that pidfd still refers to a live process numbered pid (in the caller's PID
// namespace), from its fdinfo: a process that has exited shows Pid -1.
func verifyPidfd(pidfd, pid int) error {
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return fmt.Errorf("init %d exited before it was traced: %w", pid, err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", pidfd))
	if err != nil {
		return fmt.Errorf("read the pidfd of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			if got, _ := strconv.Atoi(strings.TrimSpace(v)); got != pid {
				return fmt.Errorf("the pidfd refers to process %s, not %d: the PID was recycled", strings.TrimSpace(v), pid)
			}
			return nil
		}
	}
	return fmt.Errorf("the pidfd of %d is not a pidfd", pid)
}

const traceOptions = unix.PTRACE_O_TRACEEXIT | unix.PTRACE_O_TRACECLONE | unix.PTRACE_O_TRACESYSGOOD

// attach seizes every thread of the process, listing its tasks until no new thread shows up.
func (h *tracer) attach() error {
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
				switch {
				case errno == unix.ESRCH:
					continue // the thread exited meanwhile
				case errno == unix.EPERM:
					switch traced, exiting := h.seizedAlready(tid); {
					case traced:
						// Started by a thread seized already, and so traced since its clone.
						h.threads[tid] = true
						added++
						continue
					case exiting:
						continue // exited meanwhile, or exiting: the kernel refuses to trace it
					}
				}
				return fmt.Errorf("ptrace seize thread %d of %d: %w", tid, h.pid, errno)
			}
			if !threadOf(tid, h.pid) {
				// The thread exited after the listing and its id went to another process.
				unix.PtraceDetach(tid)
				continue
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

// follow handles every ptrace stop and thread exit, blocking in wait4 on the tracing thread,
// until no traced thread is left.
func (h *tracer) follow() {
	for {
		var ws unix.WaitStatus
		tid, err := unix.Wait4(-1, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return // ECHILD: nothing traced is left
		}
		switch {
		case ws.Exited() || ws.Signaled():
			delete(h.threads, tid)
			delete(h.exitLetGo, tid)
			if len(h.threads) == 0 {
				return
			}
		case ws.Stopped():
			h.stopped(tid, ws)
		}
	}
}

func (h *tracer) stopped(tid int, ws unix.WaitStatus) {
	sig := ws.StopSignal()
	switch event := int(uint32(ws)>>16) & 0xff; event {
	case unix.PTRACE_EVENT_EXIT:
		h.restarted = 0
		if h.autoreap != nil {
			// Killed inside the injected syscall: its registers no longer matter.
			h.autoreap, h.followSyscalls = nil, false
			h.gate.busy(false)
		}
		if h.othersLive(tid) {
			// One thread ends while the process lives on: not init's exit.
			h.exitLetGo[tid] = true
			unix.PtraceCont(tid, 0)
			return
		}
		// The last live thread: hold it until the tracer goes away.
		if !h.exiting {
			h.exiting = true
			fmt.Fprintln(h.out, Exiting)
		}
	case unix.PTRACE_EVENT_CLONE:
		if msg, err := unix.PtraceGetEventMsg(tid); err == nil {
			h.threads[int(msg)] = true
		}
		h.cloned, h.followSyscalls = true, false
		unix.PtraceCont(tid, 0)
	case unix.PTRACE_EVENT_STOP:
		h.threads[tid] = true // a new thread's first stop, or a group-stop
		if sig == unix.SIGSTOP || sig == unix.SIGTSTP || sig == unix.SIGTTIN || sig == unix.SIGTTOU {
			unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_LISTEN, uintptr(tid), 0, 0, 0, 0)
		} else {
			h.resume(tid, 0)
		}
	case 0:
		if sig == unix.SIGTRAP|0x80 {
			h.syscallStop(tid)
			return
		}
		if tid == h.restarted {
			// Pending when the injected syscall returned: init asked to exit before it came,
			// and a handler run now would run with SIGCHLD ignored (one that waits for its
			// children would wait for ever). It is dropped, as the exit would have dropped it.
			unix.PtraceCont(tid, 0)
			return
		}
		// A signal-delivery-stop: deliver the signal as if nobody were tracing. From the first
		// signal on (the stop signal, normally), a single-threaded init is followed to its exit.
		// SIGCHLD is not such a signal: during a children-first drain init gets one as its
		// children die, long before it is asked to stop, and following it then would slow its
		// reaping by two ptrace stops a syscall (a drain of 1 000 took 20 ms longer).
		if autoreapImplemented && h.singleThreaded() && h.syscallBudget > 0 && sig != unix.SIGCHLD {
			h.followSyscalls = true
		}
		h.resume(tid, int(sig))
	default:
		unix.PtraceCont(tid, 0)
	}
}

// InjectionHook, when set (by tests only), runs in the tracer right after an autoreap
// injection is set up and before the traced thread runs it: a test delays it there, or makes a
// signal pending.
var InjectionHook func(tid int)

// singleThreaded reports whether init has had one thread since it was traced: only such an init
// is followed to its exit syscall (another thread would go on running user code in a process
// that ignores SIGCHLD).
func (h *tracer) singleThreaded() bool { return !h.cloned && len(h.threads) == 1 }

// resume lets tid run on, to its next syscall stop while init is followed.
func (h *tracer) resume(tid, sig int) {
	if h.followSyscalls {
		unix.PtraceSyscall(tid, sig)
		return
	}
	unix.PtraceCont(tid, sig)
}

// syscallStop handles a syscall-entry or -exit stop of a followed init: the exit syscall is
// turned into an autoreap, then into itself again (autoreap).
func (h *tracer) syscallStop(tid int) {
	if a := h.autoreap; a != nil {
		h.autoreap, h.followSyscalls = nil, false
		if err := a.finish(); err != nil {
			fmt.Fprintf(h.out, "%s %v\n", AutoreapFailed, err)
		} else {
			fmt.Fprintln(h.out, Autoreap)
		}
		if a.restored {
			h.restarted = tid
		}
		unix.PtraceCont(tid, 0) // on to the exit syscall again, and to the exit stop
		h.gate.busy(false)
		return
	}
	info, err := getSyscallInfo(tid)
	if err == nil && !canAutoreap(info) {
		// An init of another architecture (a 32-bit one) never makes an exit syscall this
		// tracer can rewrite: following it would only cost two stops a syscall.
		h.followSyscalls = false
		h.resume(tid, 0)
		return
	}
	if err == nil && info.Op == unix.PTRACE_SYSCALL_INFO_ENTRY && isExitSyscall(info) && h.singleThreaded() {
		h.followSyscalls = false
		if err := seccompAllowsAutoreap(tid, info); err != nil {
			// A seccomp filter that traps or kills on rt_sigaction would turn the exit into a
			// SIGSYS: init exits as it asked, its children reaped by the kernel's zap.
			fmt.Fprintf(h.out, "%s %v\n", AutoreapFailed, err)
			h.resume(tid, 0)
			return
		}
		h.gate.busy(true)
		a, err := beginAutoreap(tid)
		if err == nil {
			h.autoreap, h.followSyscalls = a, true
			if InjectionHook != nil {
				InjectionHook(tid)
			}
			unix.PtraceSyscall(tid, 0)
			return
		}
		h.gate.busy(false)
		fmt.Fprintf(h.out, "%s %v\n", AutoreapFailed, err)
	}
	if h.syscallBudget--; h.syscallBudget <= 0 {
		h.followSyscalls = false
	}
	h.resume(tid, 0)
}

// othersLive reports whether a traced thread other than tid is alive and not dying. A process
// that exits as a whole (exit_group, a fatal signal) queues SIGKILL for every other thread first,
// so at the exit stop of its last thread no other thread counts as live.
func (h *tracer) othersLive(tid int) bool {
	for t := range h.threads {
		if t != tid && !h.exitLetGo[t] && threadLive(h.pid, t) {
			return true
		}
	}
	return false
}

// pfExiting is PF_EXITING in a task's flags (/proc/PID/stat field 9).
const pfExiting = 0x4

// threadLive reports whether thread tid of process pid runs on: it exists, is not a zombie, has
// not begun to exit and has no SIGKILL pending.
func threadLive(pid, tid int) bool {
	fields, ok := procfs.StatFields(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if !ok || len(fields) < 7 || fields[0] == "Z" || fields[0] == "X" {
		return false
	}
	if flags, err := strconv.ParseUint(fields[6], 10, 64); err != nil || flags&pfExiting != 0 {
		return false
	}
	st, err := procfs.ReadStatus(tid)
	return err == nil && st.Tgid == pid && st.Pending&procfs.Bit(unix.SIGKILL) == 0
}

// seizedAlready explains an EPERM from seizing tid, a thread of init. traced: the calling thread
// (every ptrace request comes from it) traces tid already, as it does a thread that a seized
// thread started (PTRACE_O_TRACECLONE attaches it), which a second PTRACE_SEIZE refuses.
// exiting: tid has exited or is exiting, which PTRACE_SEIZE refuses too.
func (h *tracer) seizedAlready(tid int) (traced, exiting bool) {
	st, err := procfs.ReadStatus(tid)
	if err != nil {
		return false, true
	}
	if st.Tgid != h.pid {
		return false, true // exited, and its id went to another process
	}
	return st.TracerPid == unix.Gettid(), st.State == 'Z' || st.State == 'X'
}

// threadOf reports whether tid is a thread of process pid.
func threadOf(tid, pid int) bool {
	st, err := procfs.ReadStatus(tid)
	return err == nil && st.Tgid == pid
}
