package process

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/internal/testguard"
)

const tracerEnv = "GRACEFUL_TEST_HOLDER_PID"

func TestMain(m *testing.M) {
	if os.Getenv(threadInitEnv) != "" {
		threadInit()
	}
	if ns := os.Getenv(signallerEnv); ns != "" {
		os.Exit(helper.SignallerMain([]string{ns}, os.Stdin, os.Stdout))
	}
	if os.Getenv(epollSeccompEnv) != "" {
		os.Exit(epollUnderSeccomp())
	}
	if pid := os.Getenv(tracerEnv); pid != "" {
		setTracerHook(os.Getenv(tracerHookEnv))
		n, _ := strconv.Atoi(pid)
		if err := helper.RunTracer(n, 3, os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	// The tests themselves: in a cgroup of their own, after removing what killed runs left.
	os.Exit(testguard.Main(m))
}

// The tracer keeps a namespace's init in its exit while the rest of the namespace is drained;
// release lets it finish.
func TestTracerHoldsInitWhileTheRestDrains(t *testing.T) {
	dir := t.TempDir()
	ns := startNamespace(t, fmt.Sprintf(`sh -c 'trap "sleep 0.2; echo clean > %s/child; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
trap "exit 0" TERM
echo ready; while :; do sleep 0.05; done`, dir))
	ns.expect(t, "trapped")

	tracer, release, next := startTracer(t, ns.init)
	expectTracer(t, next, helper.Attached)
	syscall.Kill(ns.init, syscall.SIGTERM)
	expectTracer(t, next, helper.Autoreap, helper.Exiting)
	scope := ns.scope(t)
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 5*time.Second)
	if got := readMarker(t, filepath.Join(dir, "child")); got != "clean" {
		t.Fatalf("child did not finish its cleanup while init was held: %+v", report.Processes)
	}
	releaseHeld(t, ns.init, release)
	if err := tracer.Wait(); err != nil {
		t.Fatalf("tracer: %v", err)
	}
}

// tracerCommand is helper.RunTracer in a process of its own for PID pid, handed a copy of pidfd (a pidfd
// of pid, unless a test fakes a recycled PID); the copy is closed at the test's end.
func tracerCommand(t *testing.T, pid int, pidfd *Handle) *exec.Cmd {
	t.Helper()
	fd, err := unix.FcntlInt(uintptr(pidfd.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	file := os.NewFile(uintptr(fd), "pidfd")
	t.Cleanup(func() { file.Close() })
	tracer := exec.Command("/proc/self/exe")
	tracer.Env = append(os.Environ(), tracerEnv+"="+strconv.Itoa(pid))
	tracer.ExtraFiles = []*os.File{file}
	return tracer
}

// tracerHookEnv names the helper.InjectionHook a test's tracer runs: "usr1" makes SIGUSR1 pending
// for the injected thread.
const tracerHookEnv = "GRACEFUL_TEST_HOLDER_HOOK"

func setTracerHook(hook string) {
	switch hook {
	case "usr1":
		helper.InjectionHook = func(tid int) { unix.Tgkill(tid, tid, unix.SIGUSR1) }
	}
}

// startTracer starts a tracer for process pid. next returns its next message.
func startTracer(t *testing.T, pid int) (tracer *exec.Cmd, release io.WriteCloser, next func() string) {
	t.Helper()
	return startTracerWith(t, pid, "")
}

// startTracerWith is startTracer with the injection hook named hook (see tracerHookEnv).
func startTracerWith(t *testing.T, pid int, hook string) (tracer *exec.Cmd, release io.WriteCloser, next func() string) {
	t.Helper()
	h, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	tracer = tracerCommand(t, pid, h)
	tracer.Env = append(tracer.Env, tracerHookEnv+"="+hook)
	release, _ = tracer.StdinPipe()
	stdout, _ := tracer.StdoutPipe()
	if err := testguard.Start(tracer); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tracer.Process.Kill(); tracer.Wait() })
	lines := bufio.NewScanner(stdout)
	next = func() string {
		if !lines.Scan() {
			return "EOF"
		}
		return strings.TrimSpace(lines.Text())
	}
	return tracer, release, next
}

// releaseHeld checks that the held process pid is still there, releases it and waits until it
// has finished exiting.
func releaseHeld(t *testing.T, pid int, release io.Writer) {
	t.Helper()
	h, err := Open(pid)
	if err != nil {
		t.Fatalf("process %d gone while held: %v", pid, err)
	}
	defer h.Close()
	fmt.Fprintln(release, "release")
	if !waitExited(h, 5*time.Second) {
		t.Fatalf("process %d did not finish exiting after release", pid)
	}
}

// waitExited waits up to timeout for the process of h to exit. A poll interrupted by a signal
// (the Go runtime's preemption signals) is retried.
func waitExited(h *Handle, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	fds := []unix.PollFd{{Fd: int32(h.Fd()), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0)/time.Millisecond))
		if err != unix.EINTR {
			return n == 1
		}
	}
}

// threadInitEnv makes the test binary a multithreaded init (threadInit).
const threadInitEnv = "GRACEFUL_TEST_THREAD_INIT"

// threadInit is an init whose shutdown, as a thread pool's, ends a thread first: on SIGTERM one
// OS thread exits (a goroutine that locked it returns), 300 ms later init writes the marker file
// named by threadInitEnv and exits.
func threadInit() {
	runtime.GOMAXPROCS(4)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	fmt.Println("ready")
	<-sigs
	ended := make(chan struct{})
	go func() {
		runtime.LockOSThread() // returning without unlocking ends the thread
		close(ended)
	}()
	<-ended
	time.Sleep(300 * time.Millisecond)
	os.WriteFile(os.Getenv(threadInitEnv), []byte("exiting"), 0o644)
	os.Exit(0)
}

// A thread of init that ends during init's shutdown is not init's exit: the tracer lets it go and
// reports init exiting only when its last thread exits.
func TestTracerHoldsOnlyTheLastThread(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "init")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", self)
	cmd.Env = append(os.Environ(), threadInitEnv+"="+marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := cmd.StdoutPipe()
	if err := testguard.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("thread init said %q (%v)", line, err)
	}
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
	init, _ := strconv.Atoi(strings.TrimSpace(string(children)))
	if init == 0 {
		t.Fatalf("no init under unshare: %q", children)
	}
	_, release, next := startTracer(t, init)
	expectTracer(t, next, helper.Attached)
	syscall.Kill(init, syscall.SIGTERM)
	expectTracer(t, next, helper.Exiting)
	if got := readMarker(t, marker); got != "exiting" {
		t.Fatal("the tracer reported init exiting when one of its threads ended, before init itself exited")
	}
	releaseHeld(t, init, release)
}

// A tracer whose pidfd no longer refers to the process numbered pid (the PID was recycled) refuses
// to hold it, and leaves it untraced.
func TestTracerRefusesARecycledPID(t *testing.T) {
	gone := exec.Command("true")
	if err := testguard.Start(gone); err != nil {
		t.Fatal(err)
	}
	h, err := Open(gone.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	gone.Wait()
	live := exec.Command("sleep", "30")
	if err := testguard.Start(live); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })

	out, err := tracerCommand(t, live.Process.Pid, h).Output()
	h.Close()
	if err == nil || !strings.HasPrefix(string(out), helper.Failed) {
		t.Fatalf("tracer given a stale pidfd said %q (%v), want %s", out, err, helper.Failed)
	}
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", live.Process.Pid))
	if !strings.Contains(string(st), "TracerPid:\t0\n") {
		t.Fatalf("the live process with the PID is traced:\n%s", st)
	}
}

// A single-threaded init held at its exit has been made to ignore SIGCHLD on its way there
// (autoreap): a child that dies while it is held releases itself at once, instead of staying a
// zombie until the kernel's zap reaps it, one at a time, after the release. init's exit status is
// the one it asked for.
func TestHeldInitsChildrenReleaseThemselves(t *testing.T) {
	dir := t.TempDir()
	ns := startNamespace(t, fmt.Sprintf(`sleep 1000 & echo $! > %s/child
trap "exit 7" TERM
echo ready; while :; do sleep 0.05; done`, dir))
	scope := ns.scope(t)
	nsPid, err := strconv.Atoi(readMarker(t, filepath.Join(dir, "child")))
	if err != nil {
		t.Fatal(err)
	}
	child := hostPid(t, scope, nsPid)
	childfd, err := Open(child)
	if err != nil {
		t.Fatal(err)
	}
	defer childfd.Close()

	_, release, next := startTracer(t, ns.init)
	expectTracer(t, next, helper.Attached)
	syscall.Kill(ns.init, syscall.SIGTERM)
	expectTracer(t, next, helper.Autoreap, helper.Exiting)
	syscall.Kill(child, syscall.SIGKILL)
	if !waitExited(childfd, 5*time.Second) {
		t.Fatal("the child did not die of SIGKILL")
	}
	// Its release follows its exit within the same kernel call; give it a generous bound.
	for deadline := time.Now().Add(2 * time.Second); ; {
		st, err := ReadStatus(child)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child of the held init is left in state %c: not released", st.State)
		}
		runtime.Gosched()
	}
	releaseHeld(t, ns.init, release)
	expectExitStatus(t, ns.cmd, 7)
}

// expectTracer fails the test unless the tracer's next lines are want, in order.
func expectTracer(t *testing.T, next func() string, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := next(); got != w {
			t.Fatalf("tracer said %q, want %q", got, w)
		}
	}
}

// A process that keeps starting threads is attached to whole: a thread started by an already
// seized thread while the tracer lists the others is traced automatically (PTRACE_O_TRACECLONE),
// and seizing it again fails with EPERM. That must not make the tracer give up, which let such an
// init be zapped as if no tracer could hold it.
func TestTracerAttachesToAProcessStartingThreads(t *testing.T) {
	spawner := exec.Command("python3", "-c", `
import threading, time
def work():
    time.sleep(0.0005)
print("ready", flush=True)
while True:
    ts = [threading.Thread(target=work) for _ in range(8)]
    for x in ts: x.start()
    for x in ts: x.join()
`)
	out, _ := spawner.StdoutPipe()
	if err := testguard.Start(spawner); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spawner.Process.Kill(); spawner.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("the thread spawner said %q", line)
	}
	for i := 0; i < 30; i++ {
		tracer, release, next := startTracer(t, spawner.Process.Pid)
		if got := next(); got != helper.Attached {
			t.Fatalf("attach %d: tracer said %q, want %q", i, got, helper.Attached)
		}
		release.Close()
		if err := tracer.Wait(); err != nil {
			t.Fatalf("attach %d: tracer: %v", i, err)
		}
	}
	if err := spawner.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the spawner did not survive being traced and let go: %v", err)
	}
}

// A release while init is being followed through its signal handler, syscall by syscall, ends
// the tracer at once and lets init go on untraced: its handler finishes and init exits with the
// handler's own status, not killed, not held.
func TestTracerReleasedDuringInitsHandlerLetsInitFinish(t *testing.T) {
	init := exec.Command("sh", "-c", `trap 'echo handling; sleep 0.3; exit 3' TERM; echo ready; while :; do sleep 0.05; done`)
	out, _ := init.StdoutPipe()
	if err := testguard.Start(init); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { init.Process.Kill(); init.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("init said %q", lines.Text())
	}
	tracer, release, next := startTracer(t, init.Process.Pid)
	expectTracer(t, next, helper.Attached)
	init.Process.Signal(syscall.SIGTERM)
	if !lines.Scan() || lines.Text() != "handling" {
		t.Fatalf("init said %q, want its handler's output", lines.Text())
	}
	fmt.Fprintln(release, "release")
	if err := tracer.Wait(); err != nil {
		t.Fatalf("tracer after release: %v", err)
	}
	expectExitStatus(t, init, 3) // its handler's
}

// buildAutoreapInit compiles testdata/autoreapinit.c.
func buildAutoreapInit(t *testing.T) string { return buildTestProgram(t, "autoreapinit") }

// startAutoreapInit starts autoreapinit in mode, with its USR1 mark in a temp dir, and returns it
// once it is ready, with the mark's path.
func startAutoreapInit(t *testing.T, bin, mode string) (*exec.Cmd, string) {
	t.Helper()
	mark := filepath.Join(t.TempDir(), "usr1")
	init := exec.Command(bin, mode, mark)
	out, _ := init.StdoutPipe()
	init.Stderr = os.Stderr
	if err := testguard.Start(init); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { init.Process.Kill(); init.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("autoreapinit %s said %q", mode, line)
	}
	return init, mark
}

// expectExitStatus waits for cmd and fails the test unless it exited with status want.
func expectExitStatus(t *testing.T, cmd *exec.Cmd, want int) {
	t.Helper()
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != want {
		t.Fatalf("init ended with %v, want exit status %d", err, want)
	}
}

// A handled signal that comes while init's exit syscall is rewritten (a second stop signal
// forwarded to init) is not delivered on the way back to that syscall: init asked to exit before
// it came, and its handler would run with SIGCHLD ignored. init exits with its own status.
func TestAutoreapDropsASignalPendingAfterTheInjection(t *testing.T) {
	init, mark := startAutoreapInit(t, buildAutoreapInit(t), "plain")
	_, release, next := startTracerWith(t, init.Process.Pid, "usr1")
	expectTracer(t, next, helper.Attached)
	init.Process.Signal(syscall.SIGTERM)
	expectTracer(t, next, helper.Autoreap, helper.Exiting)
	release.Close()
	expectExitStatus(t, init, 5)
	if data, err := os.ReadFile(mark); err == nil {
		t.Fatalf("init's USR1 handler ran after its exit syscall was rewritten (mark %q)", strings.TrimSpace(string(data)))
	}
}

// A seccomp filter that kills on rt_sigaction(SIGCHLD) (loaded after init's handlers) would turn
// autoreap into a SIGSYS: the tracer reads the filter, leaves the exit alone and says why; init
// exits with its own status. A filter that allows rt_sigaction does not stop autoreap.
func TestAutoreapRespectsSeccomp(t *testing.T) {
	bin := buildAutoreapInit(t)
	for _, tc := range []struct {
		mode string
		want string
	}{{"seccomp-sigchld", helper.AutoreapFailed}, {"seccomp-other", helper.Autoreap}} {
		t.Run(tc.mode, func(t *testing.T) {
			init, _ := startAutoreapInit(t, bin, tc.mode)
			_, release, next := startTracer(t, init.Process.Pid)
			expectTracer(t, next, helper.Attached)
			init.Process.Signal(syscall.SIGTERM)
			got := next()
			if !strings.HasPrefix(got, tc.want) || (tc.want == helper.AutoreapFailed && !strings.Contains(got, "seccomp")) {
				t.Fatalf("tracer said %q, want %s", got, tc.want)
			}
			expectTracer(t, next, helper.Exiting)
			release.Close()
			expectExitStatus(t, init, 5)
		})
	}
}
