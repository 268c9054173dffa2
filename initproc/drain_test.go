package initproc

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/testguard"
)

// helperScript starts, in the background, a helper whose TERM handler flushes for 0.3 s and then
// prints "helper flushed" and exits 0; it prints "helper up" once its trap is set.
const helperScript = `sh -c 'trap "sleep 0.3; echo helper flushed; exit 0" TERM; echo helper up; while :; do sleep 0.02; done' & `

// ignoringHelper starts, in the background, a helper that ignores TERM and prints "stubborn up".
const ignoringHelper = `sh -c 'trap "echo stubborn got TERM" TERM; echo stubborn up; while :; do sleep 0.02; done' & `

// TestDrainWhenMainExitsByItself: the main process starts a helper and exits 3; init sends the
// helper TERM, waits for its handler to finish, and exits with main's 3, long before the grace.
func TestDrainWhenMainExitsByItself(t *testing.T) {
	ns := startInit(t, helperScript+`sleep 0.1; exit 3`)
	ns.expect(t, "helper up")
	start := time.Now()
	ns.expect(t, "helper flushed")
	if got := ns.wait(t); got != 3 {
		t.Fatalf("init exited %d, want the main process's 3", got)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the drain took %v: it waited for the grace (10 s), not for the helper", took)
	}
}

// TestDrainGraceEndsWithSIGKILL: a helper that ignores TERM is SIGKILLed when the grace (-t, and
// GRACEFUL_INIT_GRACE) is over, and init exits with main's status, not earlier.
func TestDrainGraceEndsWithSIGKILL(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []string
		env  []string
	}{
		{"flag", []string{"-t", "600ms"}, nil},
		{"environment", nil, []string{"GRACEFUL_INIT_GRACE=0.6"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "release")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			setup := func(cmd *exec.Cmd) { cmd.Env = append(os.Environ(), c.env...) }
			ns := startInitWith(t, setup, ignoringHelper+`read x < `+fifo+`; exit 4`, c.opts...)
			ns.expect(t, "stubborn up")
			// The drain starts after main reads the FIFO: from here, init must wait the grace.
			start := time.Now()
			writeFIFO(t, fifo)
			ns.expect(t, "stubborn got TERM")
			if got := ns.wait(t); got != 4 {
				t.Fatalf("init exited %d, want the main process's 4", got)
			}
			took := time.Since(start)
			if took < 600*time.Millisecond || took > 5*time.Second {
				t.Fatalf("init exited %v after main was released, want the 600 ms grace", took)
			}
			if !strings.Contains(ns.stderr.String(), "grace period over: SIGKILL") {
				t.Fatalf("init's stderr %q does not say it SIGKILLed at the grace's end", ns.stderr.String())
			}
		})
	}
}

// TestStopGoesToMainFirst: a stop signal goes to the main process only; its exit starts the drain,
// so the helper's handler runs after main's has finished, and init exits with main's status.
func TestStopGoesToMainFirst(t *testing.T) {
	ns := startInit(t, helperScript+`trap 'echo main got TERM; sleep 0.2; echo main done; exit 0' TERM; echo main up; while :; do sleep 0.02; done`)
	ns.expectAll(t, "helper up", "main up")
	syscall.Kill(ns.pid, syscall.SIGTERM)
	for _, want := range []string{"main got TERM", "main done", "helper flushed"} {
		if got := ns.line(t); got != want {
			t.Fatalf("got %q, want %q (in the order main got TERM, main done, helper flushed)", got, want)
		}
	}
	if got := ns.wait(t); got != 0 {
		t.Fatalf("init exited %d, want the main process's 0", got)
	}
}

// TestSecondStopSignalEndsTheDrain: during a drain, the first stop signal (main's) lets it go on, a
// second one ends the wait at once: SIGKILL to the rest and main's status.
func TestSecondStopSignalEndsTheDrain(t *testing.T) {
	t.Run("stop", func(t *testing.T) {
		ns := startInit(t, ignoringHelper+`echo main up; while :; do sleep 0.02; done`, "-t", "60s")
		ns.expectAll(t, "stubborn up", "main up")
		syscall.Kill(ns.pid, syscall.SIGTERM) // main dies of it: the drain starts
		ns.expect(t, "stubborn got TERM")
		start := time.Now()
		syscall.Kill(ns.pid, syscall.SIGINT)
		if got := ns.wait(t); got != 128+int(syscall.SIGTERM) {
			t.Fatalf("init exited %d, want the main process's %d", got, 128+int(syscall.SIGTERM))
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("init took %v after the second stop signal, with a 60 s grace", took)
		}
	})
	t.Run("exit by itself", func(t *testing.T) {
		// The drain began with main's own exit: a first stop signal (a client's stop) lets the
		// helper finish; a second ends it.
		ns := startInit(t, helperScript+ignoringHelper+`sleep 0.1; exit 6`, "-t", "60s")
		before := ns.expect(t, "stubborn got TERM") // the drain has begun
		syscall.Kill(ns.pid, syscall.SIGTERM)
		if !slices.Contains(before, "helper flushed") {
			ns.expect(t, "helper flushed")
		}
		select {
		case <-ns.done:
			t.Fatalf("init exited %d on the first stop signal of the drain", ns.status)
		case <-time.After(300 * time.Millisecond):
		}
		syscall.Kill(ns.pid, syscall.SIGTERM)
		if got := ns.wait(t); got != 6 {
			t.Fatalf("init exited %d, want the main process's 6", got)
		}
	})
}

// TestDrainSignal: --drain-signal (and GRACEFUL_INIT_DRAIN_SIGNAL) chooses the signal the rest
// gets.
func TestDrainSignal(t *testing.T) {
	script := `sh -c 'trap "echo helper got USR1; exit 0" USR1; trap "" TERM; echo helper up; while :; do sleep 0.02; done' & sleep 0.1; exit 0`
	t.Run("flag", func(t *testing.T) {
		ns := startInit(t, script, "--drain-signal", "SIGUSR1")
		ns.expect(t, "helper got USR1")
		ns.wait(t)
	})
	t.Run("environment", func(t *testing.T) {
		ns := startInitWith(t, func(cmd *exec.Cmd) { cmd.Env = append(os.Environ(), "GRACEFUL_INIT_DRAIN_SIGNAL=usr1") }, script)
		ns.expect(t, "helper got USR1")
		ns.wait(t)
	})
}

// TestNotPID1DrainsItsSubtreeOnly: where init is not PID 1 (a shared PID namespace), the drain
// reaches init's descendants, orphans included, and nothing else of the namespace.
func TestNotPID1DrainsItsSubtreeOnly(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	scripts := map[string]string{
		// An orphan of the main process's, reparented to init as a subreaper.
		"orphan.sh": `trap 'sleep 0.3; echo orphan flushed >> ` + out + `; exit 0' TERM; echo orphan up >> ` + out + `; while :; do sleep 0.02; done`,
		"main.sh":   `(sh ` + dir + `/orphan.sh &); while ! grep -q up ` + out + `; do sleep 0.02; done; exit 7`,
		// A sibling of init's in the namespace, which init's drain must leave alone.
		"sibling.sh": `trap 'echo sibling got TERM >> ` + out + `' TERM; while :; do sleep 0.02; done`,
		// PID 1, with its own /proc as a container has, so that init can list its descendants.
		"outer.sh": `mount --make-rprivate / && mount -t proc proc /proc || exit 99
sh ` + dir + `/sibling.sh & sibling=$!
` + initBin + ` -t 10s -- sh ` + dir + `/main.sh
echo "init exited $?" >> ` + out + `
kill -0 $sibling && echo "sibling alive" >> ` + out + `
kill -KILL $sibling`,
	}
	for name, script := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stderr := runNamespaceShell(t, syscall.CLONE_NEWNS, "sh", filepath.Join(dir, "outer.sh"))
	data, _ := os.ReadFile(out)
	if got, want := strings.TrimSpace(string(data)), "orphan up\norphan flushed\ninit exited 7\nsibling alive"; got != want {
		t.Fatalf("recorded %q, want %q; stderr %q", got, want, stderr)
	}
}

// TestOptions: -e remaps an exit code to 0, -g forwards to the main process's whole group, -v
// tells what init does on stderr, -p gives init a signal when its parent dies, and
// TINI_KILL_PROCESS_GROUP stands for -g.
func TestOptions(t *testing.T) {
	t.Run("-e", func(t *testing.T) {
		for _, c := range []struct {
			opts []string
			want int
		}{{[]string{"-e", "3"}, 0}, {[]string{"-e4", "-e", "3"}, 0}, {[]string{"-e", "4"}, 3}} {
			if got := startInit(t, "exit 3", c.opts...).wait(t); got != c.want {
				t.Errorf("%q: init exited %d, want %d", c.opts, got, c.want)
			}
		}
	})
	group := `sh -c 'trap "echo member got HUP; exit 0" HUP; echo member up; while :; do sleep 0.02; done' & trap 'echo main got HUP' HUP; echo main up; while :; do sleep 0.02; done`
	for _, c := range []struct {
		name string
		opts []string
		env  []string
	}{{"-g", []string{"-g"}, nil}, {"TINI_KILL_PROCESS_GROUP", nil, []string{"TINI_KILL_PROCESS_GROUP=1"}}} {
		t.Run(c.name, func(t *testing.T) {
			ns := startInitWith(t, func(cmd *exec.Cmd) { cmd.Env = append(os.Environ(), c.env...) }, group, c.opts...)
			ns.expectAll(t, "member up", "main up")
			syscall.Kill(ns.pid, syscall.SIGHUP)
			got := []string{ns.line(t), ns.line(t)}
			if !(got[0] == "main got HUP" && got[1] == "member got HUP") && !(got[1] == "main got HUP" && got[0] == "member got HUP") {
				t.Fatalf("after HUP: %q, want both main and the member of its group to get it", got)
			}
		})
	}
	t.Run("-v", func(t *testing.T) {
		ns := startInit(t, "exit 5", "-v")
		ns.wait(t)
		if !strings.Contains(ns.stderr.String(), "exited with status 5") {
			t.Fatalf("-v: stderr %q does not tell the main process's exit", ns.stderr.String())
		}
	})
	t.Run("-p", func(t *testing.T) {
		// init's parent, a shell, dies: init gets -p's SIGKILL, and its main process (a
		// sleep) is left to be reparented.
		cmd := exec.Command("sh", "-c", initBin+` -p SIGKILL -- sh -c 'echo main up; exec sleep 1000' & echo $!; read x`)
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := testguard.Start(cmd); err != nil {
			t.Fatal(err)
		}
		// Two lines in either order: the shell's $! (init's PID) and the main process's "main up"
		// (init runs: it has set its parent-death signal, before it started the main process).
		out := bufio.NewReader(stdout)
		var initPid int
		mainUp := false
		for i := 0; i < 2; i++ {
			line, err := out.ReadString('\n')
			if err != nil {
				t.Fatalf("read: %q (%v)", line, err)
			}
			if line == "main up\n" {
				mainUp = true
			} else if initPid, err = strconv.Atoi(strings.TrimSpace(line)); err != nil {
				t.Fatalf("unexpected line %q", line)
			}
		}
		if !mainUp || initPid == 0 {
			t.Fatalf("init's PID %d, main up %v", initPid, mainUp)
		}
		pidfd, err := unix.PidfdOpen(initPid, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pidfd)
		children, _ := os.ReadFile("/proc/" + strconv.Itoa(initPid) + "/task/" + strconv.Itoa(initPid) + "/children")
		defer func() {
			for _, f := range strings.Fields(string(children)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}()
		cmd.Process.Kill()
		cmd.Wait()
		stdin.Close()
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 10000); n != 1 {
			syscall.Kill(initPid, syscall.SIGKILL)
			t.Fatal("init lives on after its parent died, with -p SIGKILL")
		}
	})
}

// TestBadOptions: a bad option or environment variable ends init with 2 and a message naming it,
// before the main process starts.
func TestBadOptions(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string
		msg  string
	}{
		{[]string{"-x"}, "", "unknown option -x"},
		{[]string{"--frobnicate"}, "", "unknown option --frobnicate"},
		{[]string{"-e", "256"}, "", "-e 256: the exit code must be a number from 0 to 255"},
		{[]string{"-p", "SIGNOPE"}, "", "-p SIGNOPE: not a signal"},
		{[]string{"--grace", "soon"}, "", "--grace soon: the grace period must be a duration"},
		{[]string{"--grace=-1s"}, "", "--grace -1s: the grace period must be a duration"},
		{[]string{"-d", "STOP"}, "", "-d STOP: not a drain signal"},
		{[]string{"--version=1"}, "", "option --version takes no value"},
		{nil, "GRACEFUL_INIT_GRACE=10x", "GRACEFUL_INIT_GRACE 10x: the grace period must be a duration"},
		{nil, "GRACEFUL_INIT_DRAIN_SIGNAL=0", "GRACEFUL_INIT_DRAIN_SIGNAL 0: not a drain signal"},
		{nil, "TINI_VERBOSITY=loud", "TINI_VERBOSITY=loud: the verbosity must be a number"},
	} {
		t.Run(strings.Join(c.args, " ")+c.env, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "started")
			cmd := exec.Command(initBin, append(c.args, "--", "sh", "-c", "touch "+marker)...)
			cmd.Env = append(os.Environ(), c.env)
			out, _ := cmd.CombinedOutput()
			if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2; output %q", cmd.ProcessState, out)
			}
			if !strings.Contains(string(out), c.msg) || !strings.Contains(string(out), "usage:") {
				t.Fatalf("output %q does not say %q and the usage", out, c.msg)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the main process ran despite the bad option")
			}
		})
	}
	// The command line wins over the environment, and --help and --version answer whatever it is.
	if out, err := exec.Command("env", "GRACEFUL_INIT_GRACE=bad", initBin, "--grace", "1h", "--", "true").CombinedOutput(); err != nil {
		t.Errorf("--grace 1h over a bad GRACEFUL_INIT_GRACE: %v %q", err, out)
	}
	if out, err := exec.Command("env", "GRACEFUL_INIT_GRACE=bad", initBin, "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--grace") {
		t.Errorf("--help with a bad GRACEFUL_INIT_GRACE: %v %q", err, out)
	}
	// And no program at all.
	out, _ := exec.Command(initBin, "-v").CombinedOutput()
	if !strings.Contains(string(out), "no program to run") {
		t.Fatalf("no program: %q", out)
	}
}

// TestShimModeNoticesProcessesThatAreNotItsChildren: under the shim, once the main process is
// gone, init exits when the last process of its namespace does, also one a runtime's exec put
// there (not init's child, so its exit raises no SIGCHLD in init).
func TestShimModeNoticesProcessesThatAreNotItsChildren(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := startInit(t, `echo ready; read x < `+fifo+`; exit 3`, "--shim")
	ns.expect(t, "ready")
	// An exec: a process entering init's PID namespace from outside, child of nsenter.
	execd := exec.Command("nsenter", "-t", strconv.Itoa(ns.pid), "-p", "--", "sh", "-c", "echo in; read x")
	stdin, _ := execd.StdinPipe()
	stdout, _ := execd.StdoutPipe()
	if err := testguard.Start(execd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { execd.Process.Kill(); execd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "in\n" {
		t.Fatalf("the exec'd process printed %q (%v)", line, err)
	}
	writeFIFO(t, fifo)
	select {
	case <-ns.done:
		t.Fatalf("init exited (%d) while the exec'd process runs", ns.status)
	case <-time.After(300 * time.Millisecond):
	}
	stdin.Close() // the exec'd process exits
	if got := ns.wait(t); got != 3 {
		t.Fatalf("init exited %d, want the main process's 3", got)
	}
}

// TestStopSignalsBeforeTheDrainLeaveItsGrace: stop signals the main process got while it ran
// (two HUPs for a HUP drain signal, two ^C) do not count as the drain's second stop signal: the
// drain still waits for the helper.
func TestStopSignalsBeforeTheDrainLeaveItsGrace(t *testing.T) {
	ns := startInit(t, `sh -c 'trap "sleep 0.3; echo helper flushed; exit 0" HUP; echo helper up; while :; do sleep 0.02; done' &
n=0; trap 'n=$((n+1)); echo main got HUP $n; [ $n -ge 2 ] && exit 0' HUP; echo main up; while :; do sleep 0.02; done`, "-d", "HUP", "-t", "30s")
	ns.expectAll(t, "helper up", "main up")
	syscall.Kill(ns.pid, syscall.SIGHUP)
	ns.expect(t, "main got HUP 1")
	syscall.Kill(ns.pid, syscall.SIGHUP)
	ns.expect(t, "main got HUP 2")
	ns.expect(t, "helper flushed")
	if got := ns.wait(t); got != 0 {
		t.Fatalf("init exited %d, want the main process's 0", got)
	}
}

// TestOwnSignalsAreNotForwarded: a SIGPIPE init raises on itself, writing to a closed stderr, is
// not passed to the main process; SIGTTIN and SIGTTOU sent to init are not either.
func TestOwnSignalsAreNotForwarded(t *testing.T) {
	t.Run("SIGPIPE", func(t *testing.T) {
		ns := startInitWith(t, func(cmd *exec.Cmd) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			r.Close() // init's writes to stderr raise SIGPIPE
			cmd.Stderr = w
			t.Cleanup(func() { w.Close() })
		}, `trap 'echo main got PIPE' PIPE; (sh -c 'exit 0' &); sleep 0.3; echo main done; exit 0`, "-w")
		for {
			line := ns.line(t)
			if line == "main got PIPE" {
				t.Fatal("init's own SIGPIPE reached the main process")
			}
			if line == "main done" {
				break
			}
		}
		if got := ns.wait(t); got != 0 {
			t.Fatalf("init exited %d, want 0", got)
		}
	})
	t.Run("SIGTTIN", func(t *testing.T) {
		ns := startInit(t, `trap 'echo main got TTIN' TTIN; trap 'echo main got WINCH' WINCH; echo main up; while :; do sleep 0.02; done`)
		ns.expect(t, "main up")
		syscall.Kill(ns.pid, syscall.SIGTTIN)
		syscall.Kill(ns.pid, syscall.SIGWINCH) // forwarded after a forwarded TTIN would be
		if line := ns.line(t); line != "main got WINCH" {
			t.Fatalf("main printed %q first, want %q", line, "main got WINCH")
		}
	})
}

// TestStoppedProcessIsDrained: a helper stopped (SIGSTOP) when the drain begins gets SIGCONT
// after the drain signal, as systemd sends it, and so runs its handler instead of waiting for the
// grace's SIGKILL.
func TestStoppedProcessIsDrained(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := startInit(t, `sh -c 'trap "sleep 0.3; echo helper flushed; exit 0" TERM; echo helper up; kill -STOP $$; while :; do sleep 0.02; done' &
read x < `+fifo+`; exit 0`, "-t", "30s")
	ns.expect(t, "helper up")
	ns.waitProcs(t, "the helper is stopped", func(ps []proc) bool {
		for _, p := range ps {
			if p.state == 'T' {
				return true
			}
		}
		return false
	})
	writeFIFO(t, fifo)
	ns.expect(t, "helper flushed")
	if got := ns.wait(t); got != 0 {
		t.Fatalf("init exited %d, want 0", got)
	}
}

// TestNoProcFallsBackToTheMainGroup: where init is not PID 1 and /proc is not its namespace's,
// the drain reaches the main process's group, where a shell's background helpers are.
func TestNoProcFallsBackToTheMainGroup(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := initBin + ` -t 30s -- sh -c 'sh -c "trap \"sleep 0.3; echo helper flushed >> ` + out + `; exit 0\" TERM; echo helper up >> ` + out + `; while :; do sleep 0.02; done" & while ! grep -q up ` + out + `; do sleep 0.02; done; exit 5'; echo "init exited $?" >> ` + out
	// A new PID namespace whose shell, PID 1, runs init as its child; /proc stays the host's.
	stderr := runNamespaceShell(t, 0, "sh", "-c", script)
	data, _ := os.ReadFile(out)
	if got, want := strings.TrimSpace(string(data)), "helper up\nhelper flushed\ninit exited 5"; got != want {
		t.Fatalf("recorded %q, want %q; stderr %q", got, want, stderr)
	}
}

// TestTerminalInterruptDuringTheDrain: with a terminal, ^C once the main process is gone reaches
// init (which takes the terminal's foreground back), and two of them end the drain.
func TestTerminalInterruptDuringTheDrain(t *testing.T) {
	master, slave := openPTY(t)
	defer master.Close()
	defer slave.Close()
	ns := startInitWith(t, withTerminal(slave), ignoringHelper+`sleep 0.1; exit 9`, "-t", "60s")
	ns.expect(t, "stubborn up")
	ns.expect(t, "stubborn got TERM")
	start := time.Now()
	// The terminal's foreground group is init's once the drain runs; ^C twice, the second once
	// init has taken the first (two pending SIGINTs would be one).
	for i := 0; i < 2; i++ {
		woken := wakeups(t, ns.pid)
		if _, err := master.Write([]byte{3}); err != nil {
			t.Fatal(err)
		}
		waitTaken(t, ns.pid, syscall.SIGINT, woken)
	}
	if got := ns.wait(t); got != 9 {
		t.Fatalf("init exited %d, want the main process's 9", got)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("init took %v after two ^C, with a 60 s grace", took)
	}
}

// procStatus reads the fields of /proc/PID/status; ok is false once the process is gone.
func procStatus(pid int) (fields map[string]string, ok bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, false
	}
	fields = map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if name, value, found := strings.Cut(line, ":"); found {
			fields[name] = strings.TrimSpace(value)
		}
	}
	return fields, true
}

// wakeups is how many times process pid has slept and woken (voluntary context switches).
func wakeups(t *testing.T, pid int) int {
	t.Helper()
	st, ok := procStatus(pid)
	if !ok {
		t.Fatalf("process %d is gone", pid)
	}
	n, _ := strconv.Atoi(st["voluntary_ctxt_switches"])
	return n
}

// waitTaken waits until process pid, asleep with wakeups woken when signal sig was sent, has woken
// and sig is no longer pending at it: it has taken the signal.
func waitTaken(t *testing.T, pid int, sig syscall.Signal, woken int) {
	t.Helper()
	bit := uint64(1) << (sig - 1)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		st, ok := procStatus(pid)
		if !ok {
			return
		}
		shared, _ := strconv.ParseUint(st["ShdPnd"], 16, 64)
		own, _ := strconv.ParseUint(st["SigPnd"], 16, 64)
		n, _ := strconv.Atoi(st["voluntary_ctxt_switches"])
		if n > woken && (shared|own)&bit == 0 {
			return
		}
	}
	t.Fatalf("process %d did not take signal %v", pid, sig)
}
