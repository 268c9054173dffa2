package process

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/testguard"
)

const signallerEnv = "GRACEFUL_TEST_SIGNALLER_NS"

// testSignaller is helper.SignallerMain in a process of its own (the test binary), started inside the
// PID namespace of a test namespace's init, as the shim starts graceful-hold -signal-all.
type testSignaller struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	ready bool
	calls int
}

func startTestSignaller(t *testing.T, init int) *testSignaller {
	t.Helper()
	ns, err := procfs.NSInode(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(init)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	s := &testSignaller{}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Setns(h.Fd(), unix.CLONE_NEWPID); err != nil {
			errc <- err
			return
		}
		s.cmd = exec.Command(os.Args[0])
		s.cmd.Env = append(os.Environ(), signallerEnv+"="+strconv.FormatUint(ns, 10))
		s.cmd.Stderr = os.Stderr
		var err error
		if s.in, err = s.cmd.StdinPipe(); err != nil {
			errc <- err
			return
		}
		out, err := s.cmd.StdoutPipe()
		if err != nil {
			errc <- err
			return
		}
		s.out = bufio.NewScanner(out)
		errc <- s.cmd.Start()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.in.Close()
		s.cmd.Wait()
	})
	return s
}

func (s *testSignaller) Pid() int { return s.cmd.Process.Pid }

func (s *testSignaller) SignalAll(sig unix.Signal) (SignalWindow, error) {
	s.calls++
	if !s.ready {
		if !s.out.Scan() || s.out.Text() != helper.SignallerReady {
			return SignalWindow{}, fmt.Errorf("signaller did not start: %q", s.out.Text())
		}
		s.ready = true
	}
	fmt.Fprintf(s.in, "%d\n", int(sig))
	if !s.out.Scan() {
		return SignalWindow{}, errors.New("signaller exited")
	}
	from, to, err := helper.ParseSignalled(s.out.Text())
	return SignalWindow{From: from, To: to}, err
}

// failingSignaller stands for a signaller that died.
type failingSignaller struct{}

func (failingSignaller) Pid() int { return 0 }
func (failingSignaller) SignalAll(unix.Signal) (SignalWindow, error) {
	return SignalWindow{}, errors.New("the signaller exited")
}

// With a signaller, a drain signals the container's namespace at once: every member gets TERM
// and runs its handler, the report counts and details them (and not the signaller), and a process
// of the container's cgroup outside its namespace is neither signalled nor reported. A nested
// namespace's init that drops TERM is SIGKILLed once its namespace has drained, not at the end
// of the grace period.
func TestDrainSignalsTheNamespaceAtOnce(t *testing.T) {
	dir := benchCgroup(t)
	marks := t.TempDir()
	// Outside the namespace, in the container's cgroup: must be left alone.
	outsider := exec.Command("sh", "-c", fmt.Sprintf(`echo $$ > %s/cgroup.procs; trap "echo signalled > %s/outsider; exit 3" TERM; echo in; while :; do sleep 0.05; done`, dir, marks))
	outOut, _ := outsider.StdoutPipe()
	if err := testguard.Start(outsider); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outsider.Process.Kill(); outsider.Wait() })
	if line, _ := bufio.NewReader(outOut).ReadString('\n'); strings.TrimSpace(line) != "in" {
		t.Fatalf("outsider: %q", line)
	}
	script := ""
	for i := 0; i < 5; i++ {
		script += fmt.Sprintf(`sh -c 'trap "echo clean > %s/child%d; exit 0" TERM; echo trapped%d; while :; do sleep 0.05; done' &`+"\n", marks, i, i)
	}
	script += "for i in $(seq 20); do sleep 1000 & done\n"
	// A nested namespace whose init (sleep, without a TERM handler; sh before its exec, without
	// one either) drops TERM.
	script += "unshare --pid --fork sh -c 'sleep 1000 & echo nested; exec sleep 1000' &\n"
	script += "echo ready; while :; do sleep 0.05; done"
	ns := startNamespaceIn(t, dir, script)
	for i := 0; i < 5; i++ {
		ns.expect(t, fmt.Sprintf("trapped%d", i)) // its trap is set
	}
	ns.expect(t, "nested") // the nested namespace's init is there
	sig := startTestSignaller(t, ns.init)
	scope := ns.scope(t)
	before, err := scope.Members()
	if err != nil {
		t.Fatal(err)
	}
	before = slices.DeleteFunc(before, func(pid int) bool { return pid == sig.Pid() })
	// A pidfd on each member seen before the drain tells afterwards whether that very process
	// is gone (its PID may be another's by then: init's loop forks on).
	var handles []*Handle
	for _, pid := range before {
		if h, err := Open(pid); err == nil {
			handles = append(handles, h)
			defer h.Close()
		}
	}
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, Signaller: sig, KillWait: testKillWait, KillSweeps: testKillSweeps}, 20*time.Second)
	if sig.calls != 1 {
		t.Fatalf("the signaller was asked %d times, want once", sig.calls)
	}
	if report.AtOnce == 0 || report.GraceExpired || report.Duration > 10*time.Second {
		t.Fatalf("at once %d, grace expired %v, took %v: want a drain at once that ends before the grace period", report.AtOnce, report.GraceExpired, report.Duration)
	}
	for i := 0; i < 5; i++ {
		if got := readMarker(t, filepath.Join(marks, fmt.Sprintf("child%d", i))); got != "clean" {
			t.Errorf("child %d did not run its TERM handler: %+v", i, report.Totals)
		}
	}
	if got := readMarker(t, filepath.Join(marks, "outsider")); got != "" || outsider.Process.Signal(syscall.Signal(0)) != nil {
		t.Fatalf("the process outside the namespace was signalled (marker %q)", got)
	}
	total := 0
	for _, n := range report.Totals {
		total += n
	}
	// The members seen before the drain, plus the ones the drain's own sleeps start meanwhile.
	if total < len(before) {
		t.Fatalf("report counts %d processes (%v), want at least the %d members", total, report.Totals, len(before))
	}
	for _, p := range report.Processes {
		switch {
		case p.Pid == sig.Pid():
			t.Fatalf("the signaller is in the report: %+v", p)
		case p.Pid == outsider.Process.Pid:
			t.Fatalf("the outsider is in the report: %+v", p)
		case p.Pid == 0:
			t.Fatalf("a dropped entry is in the report: %+v", report.Processes)
		}
	}
	if report.Count(Killed) == 0 {
		t.Fatalf("the nested init that drops TERM was not SIGKILLed: %+v", report.Totals)
	}
	for _, h := range handles {
		if !h.Exited() {
			st, _ := ReadStatus(h.Pid)
			t.Fatalf("member %d (%+v), there before the drain, is left after it", h.Pid, st)
		}
	}
}

// When the signaller fails, the drain signals the members one by one, and says so.
func TestDrainAtOnceFallsBackToSignallingEachMember(t *testing.T) {
	dir := benchCgroup(t)
	marks := t.TempDir()
	ns := startNamespaceIn(t, dir, fmt.Sprintf(`sh -c 'trap "echo clean > %s/child; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; while :; do sleep 0.05; done`, marks))
	ns.expect(t, "trapped")
	report := Drain(context.Background(), ns.scope(t), DrainConfig{Signal: unix.SIGTERM, Signaller: failingSignaller{}, KillWait: testKillWait, KillSweeps: testKillSweeps}, 20*time.Second)
	if got := readMarker(t, filepath.Join(marks, "child")); got != "clean" {
		t.Fatalf("child did not run its TERM handler: %+v", report)
	}
	if report.AtOnce != 0 || len(report.Notes) == 0 || !strings.Contains(report.Notes[0], "one by one") {
		t.Fatalf("at once %d, notes %q: want the fallback noted", report.AtOnce, report.Notes)
	}
	if report.Count(ExitedAfterSignal) == 0 {
		t.Fatalf("totals %v", report.Totals)
	}
}

// A drain prepared before init exits lists the members then; one that exits by itself before the
// drain starts is reported as already exited, not as exited after the signal, and one started in
// between is signalled too.
func TestPreparedDrainAtOnceCountsWhatChangedBeforeTheStart(t *testing.T) {
	dir := benchCgroup(t)
	marks := t.TempDir()
	// The short member exits by itself once the test writes it a line (after the listing), the
	// late one is started by init on USR1.
	fifo := filepath.Join(marks, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := startNamespaceIn(t, dir, fmt.Sprintf(`read x < %[1]s/fifo &
echo $! > %[1]s/short
trap 'sh -c "trap \"echo clean > %[1]s/late; exit 0\" TERM; echo late; while :; do sleep 0.05; done" &' USR1
echo ready; while :; do sleep 0.05; done`, marks))
	sig := startTestSignaller(t, ns.init)
	scope := ns.scope(t)
	d := PrepareDrain(scope, DrainConfig{Signal: unix.SIGTERM, Signaller: sig, KillWait: testKillWait, KillSweeps: testKillSweeps})
	nsPid, _ := strconv.Atoi(readMarker(t, filepath.Join(marks, "short")))
	shortPid := hostPid(t, scope, nsPid)
	short, err := Open(shortPid)
	if err != nil {
		t.Fatalf("the short member %d: %v", shortPid, err)
	}
	defer short.Close()
	// O_RDWR, so as not to wait for the member to open its end; held open to the end, so that the
	// line stays in the FIFO until the member reads it.
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("end\n"); err != nil {
		t.Fatal(err)
	}
	// A member started after the listing: wait until its trap is set.
	syscall.Kill(ns.init, syscall.SIGUSR1)
	ns.expect(t, "late")
	if !short.WaitExit(10 * time.Second) {
		st, err := ReadStatus(shortPid)
		t.Fatalf("the short member %d did not exit (%+v, %v)", shortPid, st, err)
	}
	report := d.Start(20 * time.Second).Finish(context.Background())
	if got := readMarker(t, filepath.Join(marks, "late")); got != "clean" {
		t.Fatalf("the member started after the listing did not get TERM: %+v", report.Totals)
	}
	found := false
	for _, p := range report.Processes {
		if p.Pid == shortPid {
			found = true
			if p.Outcome != AlreadyExited || len(p.Signals) != 0 {
				t.Fatalf("the member that exited before the start: %+v, want %s, unsignalled", p, AlreadyExited)
			}
		}
	}
	if !found {
		t.Fatalf("the member that exited before the start (%d) is not in the report: %+v", shortPid, report.Processes)
	}
}

// hostPid is the host PID of the member whose PID in its namespace is nsPid ($! in a script).
func hostPid(t *testing.T, scope *Scope, nsPid int) int {
	t.Helper()
	all, err := scope.AllMembers()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range all {
		if st, err := ReadStatus(pid); err == nil && len(st.NSpid) > 1 && st.NSpid[len(st.NSpid)-1] == nsPid {
			return pid
		}
	}
	t.Fatalf("no member is PID %d of its namespace", nsPid)
	return 0
}

// A drain at once's report says when each detailed member ended: members that take 0, 0.4 and
// 0.8 s to exit after TERM are reported in that order, each no earlier than it ended, and the
// fast one well before the slow ones.
func TestDrainAtOnceReportsWhenEachMemberEnded(t *testing.T) {
	dir := benchCgroup(t)
	script := ""
	// The handlers' sleeps are kept on purpose: they are the workload whose ends the test measures.
	for i, delay := range []string{"0", "0.4", "0.8"} {
		script += fmt.Sprintf(`sh -c 'trap "sleep %s; exit 0" TERM; echo m%d; sleep 1000 & wait' &`+"\n", delay, i)
	}
	// Nothing forks before the signal: a fork caught before its exec would carry its parent's
	// command line into the report. So each member has set its trap and its sleep has exec'd.
	script += "echo ready; exec sleep 1000"
	ns := startNamespaceIn(t, dir, script)
	for i := 0; i < 3; i++ {
		ns.expect(t, fmt.Sprintf("m%d", i))
	}
	ns.awaitExeced(t, "sleep", 3)
	sig := startTestSignaller(t, ns.init)
	report := Drain(context.Background(), ns.scope(t), DrainConfig{Signal: unix.SIGTERM, Signaller: sig, KillWait: testKillWait, KillSweeps: testKillSweeps}, 20*time.Second)
	if report.AtOnce == 0 || len(report.Notes) > 0 {
		t.Fatalf("at once %d, notes %q: want a drain at once", report.AtOnce, report.Notes)
	}
	after := map[string]time.Duration{}
	for _, p := range report.Processes {
		// The handlers' own sleeps are in the report too (unsignalled, and possibly with the
		// command line of the shell that forked them): the members are the ones TERMed.
		if !slices.Contains(p.Signals, "SIGTERM") {
			continue
		}
		for _, delay := range []string{"0", "0.4", "0.8"} {
			if strings.Contains(p.Command, "sleep "+delay+";") {
				if p.Outcome != ExitedAfterSignal {
					t.Fatalf("member %q: outcome %s, want %s", p.Command, p.Outcome, ExitedAfterSignal)
				}
				if _, twice := after[delay]; twice {
					t.Fatalf("member %q is in the report twice: %+v", p.Command, report.Processes)
				}
				after[delay] = p.After
			}
		}
	}
	if len(after) != 3 {
		t.Fatalf("found %d of the 3 members in the report: %+v", len(after), report.Processes)
	}
	t.Logf("ended after %v, %v, %v; drain %v", after["0"], after["0.4"], after["0.8"], report.Duration)
	if after["0.4"] < 400*time.Millisecond || after["0.8"] < 800*time.Millisecond {
		t.Fatalf("a member is reported ended before it could have: %v", after)
	}
	if !(after["0"] < after["0.4"] && after["0.4"] < after["0.8"]) || after["0"] > 300*time.Millisecond {
		t.Fatalf("the members' ends are not told apart: %v", after)
	}
	if report.Duration < after["0.8"] {
		t.Fatalf("the drain (%v) ended before its last member (%v)", report.Duration, after["0.8"])
	}
}

// A detailed listed member is followed through a pidfd of its own from the signal at once on, so that
// its end is seen at the next poll even while the container's count keeps falling (when no list
// is read): one that dies is ended at once, exited after the signal, its pidfd closed (counted
// out); the others stay followed.
func TestDrainAtOnceSeesADetailedMemberEndThroughItsPidfd(t *testing.T) {
	dir := benchCgroup(t)
	script := ""
	// Members that neither exit on TERM nor start processes (a sleep that inherits an ignored
	// TERM), so that the victim is the only one to end; init does not fork either.
	for i := 0; i < 3; i++ {
		script += `sh -c 'trap "" TERM; exec sleep 1000' &` + "\n"
	}
	script += "echo ready; exec sleep 1000"
	ns := startNamespaceIn(t, dir, script)
	ns.awaitExeced(t, "sleep", 3) // a fork not yet exec'd would die of TERM
	sig := startTestSignaller(t, ns.init)
	d := PrepareDrain(ns.scope(t), DrainConfig{Signal: unix.SIGTERM, Signaller: sig, KillWait: testKillWait, KillSweeps: testKillSweeps}).Start(time.Minute)
	defer d.Close()
	if d.report.AtOnce == 0 || d.listed.handles == 0 {
		t.Fatalf("at once %d, pidfds %d, notes %q: want a drain at once following its detailed members by pidfd", d.report.AtOnce, d.listed.handles, d.report.Notes)
	}
	var victim int
	var victimFd int
	for pid, m := range d.listed.members {
		if m.h != nil {
			if st, err := ReadStatus(pid); err == nil && st.PPid == ns.init && strings.Contains(readCmd(pid), "sleep 1000") {
				victim, victimFd = pid, m.h.Fd()
				break
			}
		}
	}
	if victim == 0 {
		t.Fatalf("no TERM-ignoring sleep among the detailed listed members %v", d.listed.handlePids)
	}
	fds, followed := d.listed.handles, len(d.listed.members)
	if err := unix.Kill(victim, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait on the drain's own pidfd of the victim, then let the drain look once.
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(victimFd), Events: unix.POLLIN}}, 10000); n != 1 || err != nil {
		t.Fatalf("the victim's pidfd did not become readable: %d, %v", n, err)
	}
	d.endExitedHandles(ExitedAfterSignal)
	if _, still := d.listed.members[victim]; still {
		t.Fatalf("member %d, SIGKILLed, is still followed after a poll", victim)
	}
	if d.listed.handles != fds-1 || len(d.listed.members) != followed-1 {
		t.Fatalf("pidfds %d → %d, followed %d → %d: want exactly the victim's gone", fds, d.listed.handles, followed, len(d.listed.members))
	}
	for _, p := range d.report.Processes {
		if p.Pid == victim && (p.Outcome != ExitedAfterSignal || p.After <= 0) {
			t.Fatalf("the victim's entry: %+v", p)
		}
	}
}

// readCmd is /proc/PID/cmdline with spaces, "" when unreadable.
func readCmd(pid int) string {
	s, _ := readCmdline(pid)
	return s
}

// A member's TERM handler may start a process of its own (a cleanup command) right after the
// signal at once. That process was started after its parent got TERM, so nobody TERMs it: the
// handler's `sleep` exits 0, the handler ends cleanly, and the drain waits for it. The idle host
// processes make each kill(-1) walk (which looks at every task on the host) long enough for the
// handlers' forks to land while the signaller is still at work.
func TestDrainAtOnceLeavesAHandlersOwnProcessAlone(t *testing.T) {
	startIdleHostProcesses(t, 3000)
	const members, stops = 40, 3
	for stop := 0; stop < stops; stop++ {
		dir := benchCgroup(t)
		marks := t.TempDir()
		script := ""
		for i := 0; i < members; i++ {
			script += fmt.Sprintf(`sh -c 'trap "sleep 0.3; echo \$? > %s/m%d; exit 0" TERM; echo trapped%d; sleep 1000 & wait' &`+"\n", marks, i, i)
		}
		script += "echo ready; exec sleep 1000"
		ns := startNamespaceIn(t, dir, script)
		for i := 0; i < members; i++ {
			ns.expect(t, fmt.Sprintf("trapped%d", i)) // its trap is set
		}
		ns.awaitExeced(t, "sleep", members) // and its sleep started
		sig := startTestSignaller(t, ns.init)
		report := Drain(context.Background(), ns.scope(t), DrainConfig{Signal: unix.SIGTERM, Signaller: sig, KillWait: testKillWait, KillSweeps: testKillSweeps}, 20*time.Second)
		if report.AtOnce == 0 || len(report.Notes) > 0 {
			t.Fatalf("stop %d: at once %d, notes %q: want a drain at once", stop, report.AtOnce, report.Notes)
		}
		var killed []string
		for i := 0; i < members; i++ {
			if got := readMarker(t, filepath.Join(marks, fmt.Sprintf("m%d", i))); got != "0" {
				killed = append(killed, fmt.Sprintf("m%d: %q", i, got))
			}
		}
		if len(killed) > 0 {
			t.Fatalf("stop %d: %d of %d handlers' own sleeps did not exit 0 (143: TERMed) %v; report %+v", stop, len(killed), members, killed, report.Totals)
		}
		if report.Duration < 300*time.Millisecond {
			t.Fatalf("stop %d: the drain ended after %v, before the handlers (0.3 s) could have", stop, report.Duration)
		}
		if n := report.Totals[Killed]; n != 0 {
			t.Fatalf("stop %d: the drain killed %d processes at its grace's end: %+v", stop, n, report.Totals)
		}
	}
}

// startIdleHostProcesses starts n idle processes outside any namespace under test: shells blocked
// opening a FIFO nobody writes to, as blockers starts them. They are SIGKILLed at cleanup.
func startIdleHostProcesses(t *testing.T, n int) {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	spawner := func(k, i int) string {
		return fmt.Sprintf("(for i in $(seq %d); do read x < %q & done; echo spawned%d; read x < %q) &\n", k-1, fifo, i, fifo)
	}
	// In a PID namespace of their own, so that they die with it (and with the test binary): the
	// kill(-1) walk looks at every task on the host all the same.
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "sh", "-c", spawner(n/2, 0)+spawner(n-n/2, 1)+"wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testguard.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	lines := bufio.NewScanner(out)
	for i := 0; i < 2; i++ {
		if !lines.Scan() {
			t.Fatalf("the idle host processes' spawners ended early: %v", lines.Err())
		}
	}
}
