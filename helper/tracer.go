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
	// Autoreap: init, entering its exit syscall, was made to ignore SIGCHLD, so that children
	// dying while it is held reap themselves.
	Autoreap = "autoreap"
	// AutoreapFailed prefixes why that could not be done; the hold goes on without it.
	AutoreapFailed = "autoreap-failed"
)

// autoreapSyscallBudget bounds the syscall stops spent following a signalled init to its exit.
const autoreapSyscallBudget = 512

// TracerPidfd is the descriptor on which a tracer process receives init's pidfd.
const TracerPidfd = 3

// RunTracer traces every thread of process pid and holds the last live one at its exit stop,
// before exit_notify, so that the rest of its PID namespace is still alive to be drained. Signals
// pass straight through; pidfd is checked after the seize, so a recycled PID is never held. A
// signalled single-threaded init is followed to its exit syscall and autoreaped first (autoreap).
//
// It writes Attached, then Exiting, to out. When in yields "release" or EOF the process exits at
// once (never mid-injection) and the kernel detaches every thread; RunTracer returns only on an
// error or once no thread is left. It must be the main of a process of its own: ptrace stops come
// through wait4, which the tracing thread blocks in.
func RunTracer(pid, pidfd int, in io.Reader, out io.Writer) error {
	raiseHelperPriority() // and every ptrace request must come from the tracing thread
	gate := &releaseGate{}
	// Busy until the attach is reported, so an input closed at once cannot exit first.
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

// releaseGate ends the process on release, deferred while an injected syscall is in flight.
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

// busy marks the start or end of work release must wait for; a deferred release acts at its end.
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
	// followSyscalls: init is resumed with PTRACE_SYSCALL until its exit syscall or the budget.
	followSyscalls bool
	syscallBudget  int
	// autoreap is the injected rt_sigaction in flight, till its exit stop.
	autoreap *autoreap
	// restarted is the thread sent back to its exit syscall after the injection: a signal on the
	// way is not delivered, since init never returns from that syscall to run a handler.
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

// follow handles every ptrace stop and thread exit until no traced thread is left.
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
			// Pending when the injected syscall returned: a handler would now run with SIGCHLD
			// ignored (and might wait for ever), so it is dropped, as the exit would drop it.
			unix.PtraceCont(tid, 0)
			return
		}
		// A signal-delivery-stop: pass it on. From the first signal other than SIGCHLD (which a
		// children-first drain sends early), a single-threaded init is followed to its exit.
		if autoreapImplemented && h.singleThreaded() && h.syscallBudget > 0 && sig != unix.SIGCHLD {
			h.followSyscalls = true
		}
		h.resume(tid, int(sig))
	default:
		unix.PtraceCont(tid, 0)
	}
}

// InjectionHook, when set (tests only), runs right after an autoreap injection is set up.
var InjectionHook func(tid int)

// singleThreaded reports whether init has had one thread since it was traced: only such an init
// is autoreaped (another thread would run on in a process that ignores SIGCHLD).
func (h *tracer) singleThreaded() bool { return !h.cloned && len(h.threads) == 1 }

func (h *tracer) resume(tid, sig int) {
	if h.followSyscalls {
		unix.PtraceSyscall(tid, sig)
		return
	}
	unix.PtraceCont(tid, sig)
}

// syscallStop handles a followed init's syscall stops, turning its exit syscall into an autoreap.
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
		// A 32-bit init's exit syscall cannot be rewritten: stop following it.
		h.followSyscalls = false
		h.resume(tid, 0)
		return
	}
	if err == nil && info.Op == unix.PTRACE_SYSCALL_INFO_ENTRY && isExitSyscall(info) && h.singleThreaded() {
		h.followSyscalls = false
		if err := seccompAllowsAutoreap(tid, info); err != nil {
			// A seccomp filter on rt_sigaction would turn the exit into a SIGSYS: no autoreap.
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

// othersLive reports whether a traced thread other than tid is alive and not dying. A whole-process
// exit (exit_group, fatal signal) first queues SIGKILL for every other thread, so none counts then.
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

// threadLive reports whether thread tid of pid runs on: no zombie, not exiting, no SIGKILL pending.
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
// traces tid already (PTRACE_O_TRACECLONE attached it when a seized thread started it). exiting:
// tid has exited or is exiting, which PTRACE_SEIZE refuses too.
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

func threadOf(tid, pid int) bool {
	st, err := procfs.ReadStatus(tid)
	return err == nil && st.Tgid == pid
}
