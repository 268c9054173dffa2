package initproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestOrphanIsReaped: the main process never waits, and a grandchild whose parent exited is
// reparented to init; once it exits, no zombie is left in the namespace.
func TestOrphanIsReaped(t *testing.T) {
	dir := t.TempDir()
	orphanFile := filepath.Join(dir, "orphan")
	ns := startInit(t, `sh -c 'sleep 0.3 & echo $! > `+orphanFile+`'; echo ready; exec sleep 1000`)
	ns.expect(t, "ready")
	nspid, err := strconv.Atoi(readMarker(t, orphanFile))
	if err != nil {
		t.Fatalf("orphan's PID: %v", err)
	}
	// While it runs, the orphan is init's.
	if orphan, ok := byNSPid(ns.procs(t), nspid); ok && orphan.state != 'Z' && orphan.ppid != ns.pid {
		t.Fatalf("orphan %+v has parent %d, want init %d", orphan, orphan.ppid, ns.pid)
	}
	ps := ns.waitProcs(t, "the orphan has exited and been reaped", func(ps []proc) bool {
		_, alive := byNSPid(ps, nspid)
		return !alive
	})
	if z := zombies(ps); len(z) > 0 {
		t.Fatalf("zombies left: %+v", z)
	}
	// What is left is init and the main process, sleep.
	if len(ps) != 2 {
		t.Fatalf("namespace has %+v, want init and sleep", ps)
	}
}

// TestExitStatus: init exits with the main process's exit status, or 128+n when signal n killed it.
func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		name, script string
		want         int
	}{
		{"exit 0", "exit 0", 0},
		{"exit 3", "exit 3", 3},
		{"SIGKILL", "kill -KILL $$", 137},
		{"SIGTERM", "kill -TERM $$", 143},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := startInit(t, c.script)
			if got := ns.wait(t); got != c.want {
				t.Fatalf("init exited %d, want %d", got, c.want)
			}
		})
	}
}

// TestSignalsReachMain: signals sent to init reach the main process; one that kills it ends init
// with 128+n.
func TestSignalsReachMain(t *testing.T) {
	ns := startInit(t, `trap 'echo got HUP' HUP; trap 'echo got USR1' USR1; trap 'echo got USR2' USR2; echo ready; while :; do sleep 0.02; done`)
	ns.expect(t, "ready")
	for _, c := range []struct {
		sig  syscall.Signal
		want string
	}{{syscall.SIGHUP, "got HUP"}, {syscall.SIGUSR1, "got USR1"}, {syscall.SIGUSR2, "got USR2"}, {syscall.SIGHUP, "got HUP"}} {
		if err := syscall.Kill(ns.pid, c.sig); err != nil {
			t.Fatal(err)
		}
		ns.expect(t, c.want)
	}
	syscall.Kill(ns.pid, syscall.SIGTERM)
	if got := ns.wait(t); got != 128+int(syscall.SIGTERM) {
		t.Fatalf("init exited %d, want %d", got, 128+int(syscall.SIGTERM))
	}
}

// TestUnderTheShimWaitsForTheRest: under the graceful shim (--shim), after the main process
// exits, init neither drains nor forwards: it stays until the last process under it has exited,
// leaving the drain to the shim, and then exits with the main process's status.
func TestUnderTheShimWaitsForTheRest(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The helper, a background child of the main process, outlives it and is reparented to init.
	ns := startInit(t, `sh -c 'trap "echo helper got TERM" TERM; read x < `+fifo+`; echo helper done' & echo "ready $$ $!"; exit 5`, "--shim")
	var mainPid, helperPid int
	if f := strings.Fields(ns.line(t)); len(f) == 3 && f[0] == "ready" {
		mainPid, _ = strconv.Atoi(f[1])
		helperPid, _ = strconv.Atoi(f[2])
	} else {
		t.Fatalf("main printed %q", f)
	}
	ns.waitProcs(t, "the main process is reaped", func(ps []proc) bool {
		_, alive := byNSPid(ps, mainPid)
		return !alive
	})
	helper, ok := byNSPid(ns.procs(t), helperPid)
	if !ok {
		t.Fatalf("the helper is gone: %+v", ns.procs(t))
	}
	if helper.ppid != ns.pid {
		t.Fatalf("helper %+v has parent %d, want init %d", helper, helper.ppid, ns.pid)
	}
	// Signals now go nowhere: the helper's trap would print, or init would die.
	syscall.Kill(ns.pid, syscall.SIGTERM)
	syscall.Kill(ns.pid, syscall.SIGHUP)
	select {
	case <-ns.done:
		t.Fatalf("init exited (%d) while the helper lives", ns.status)
	case <-time.After(300 * time.Millisecond):
	}
	writeFIFO(t, fifo)
	if line := ns.line(t); line != "helper done" {
		t.Fatalf("helper printed %q, want %q", line, "helper done")
	}
	if got := ns.wait(t); got != 5 {
		t.Fatalf("init exited %d, want the main process's 5", got)
	}
}

// TestManyOrphans: 500 short-lived orphans, some exiting before their parent (zombies handed to
// init) and some after; none is left a zombie.
func TestManyOrphans(t *testing.T) {
	ns := startInit(t, `i=0; while [ $i -lt 500 ]; do if [ $((i % 25)) -eq 0 ]; then (sleep 0.1 &); else (: &); fi; i=$((i+1)); done; echo spawned; exec sleep 1000`)
	ns.expect(t, "spawned")
	ps := ns.waitProcs(t, "only init and the main process are left", func(ps []proc) bool {
		return len(ps) == 2 && len(zombies(ps)) == 0
	})
	for _, p := range ps {
		if p.pid != ns.pid && p.comm != "sleep" {
			t.Fatalf("left: %+v", ps)
		}
	}
}

// TestVersion: --version prints the version set at build time in the form dockerd's init-path
// check reads ("NAME version V - git.COMMIT"), on stdout, and exits 0 without running anything.
func TestVersion(t *testing.T) {
	out, err := exec.Command(initBin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "graceful-init version " + testVersion + " - git.unknown\n"; string(out) != want {
		t.Fatalf("--version printed %q, want %q", out, want)
	}
}

// TestCannotStart: a program that does not exist ends init with 127, one that is not executable
// with 126, each with the reason on stderr.
func TestCannotStart(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "data")
	if err := os.WriteFile(notExec, []byte("not a program\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		env  []string
		want int
		msg  string
	}{
		{"missing", []string{"--", "graceful-init-no-such-program"}, nil, 127, "No such file or directory"},
		{"missing path", []string{"--", "/nonexistent/prog"}, nil, 127, "No such file or directory"},
		{"not executable", []string{"--", notExec}, nil, 126, "Permission denied"},
		{"not executable in PATH", []string{"--", "data"}, []string{"PATH=" + dir}, 126, "Permission denied"},
		{"directory", []string{"--", dir}, nil, 126, "Permission denied"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(initBin, c.args...)
			cmd.Env = append(os.Environ(), c.env...)
			out, err := cmd.CombinedOutput()
			if cmd.ProcessState == nil {
				t.Fatal(err)
			}
			if got := cmd.ProcessState.ExitCode(); got != c.want {
				t.Fatalf("exit status %d, want %d; output %q", got, c.want, out)
			}
			if !strings.Contains(string(out), c.msg) {
				t.Fatalf("output %q does not say %q", out, c.msg)
			}
		})
	}
}

// TestPathAndEnvironment: the program is found through PATH, and gets init's environment and
// working directory as they are.
func TestPathAndEnvironment(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(initBin, "sh", "-c", `echo "$PWD|$FOO|$(env | grep -c GRACEFUL_INIT)"`)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "FOO=bar")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), dir+"|bar|0"; got != want {
		t.Fatalf("program saw %q, want %q", got, want)
	}
}

// TestProcessGroup: the main process runs in a process group of its own, and, with a terminal on
// stdin, that group is the terminal's foreground group.
func TestProcessGroup(t *testing.T) {
	// cat prints its own /proc/self/stat, less pid and comm: field 5 is its process group (the
	// main process's, cat being in the shell's group), field 8 the terminal's foreground group.
	const script = `cat /proc/self/stat | sed 's/.*) //'`
	fields := func(t *testing.T, ns *initNS) (pgrp, tpgid int) {
		f := strings.Fields(ns.line(t))
		if len(f) < 6 {
			t.Fatalf("stat fields %q", f)
		}
		pgrp, _ = strconv.Atoi(f[2])
		tpgid, _ = strconv.Atoi(f[5])
		return pgrp, tpgid
	}

	t.Run("no terminal", func(t *testing.T) {
		ns := startInit(t, script)
		pgrp, _ := fields(t, ns)
		if pgrp == ns.pid || pgrp <= 0 {
			t.Fatalf("main process in group %d, want its own (init is %d)", pgrp, ns.pid)
		}
		ns.wait(t)
	})

	t.Run("terminal", func(t *testing.T) {
		master, slave := openPTY(t)
		defer master.Close()
		defer slave.Close()
		ns := startInitWith(t, withTerminal(slave), script)
		pgrp, tpgid := fields(t, ns)
		if pgrp == ns.pid || pgrp <= 0 {
			t.Fatalf("main process in group %d, want its own (init is %d)", pgrp, ns.pid)
		}
		if tpgid != pgrp {
			t.Fatalf("terminal's foreground group is %d, want the main process's %d", tpgid, pgrp)
		}
		ns.wait(t)
	})

	t.Run("terminal that is not init's", func(t *testing.T) {
		master, slave := openPTY(t)
		defer master.Close()
		defer slave.Close()
		ns := startInitWith(t, func(cmd *exec.Cmd) { cmd.Stdin = slave }, script)
		pgrp, tpgid := fields(t, ns)
		if pgrp == ns.pid || pgrp <= 0 {
			t.Fatalf("main process in group %d, want its own (init is %d)", pgrp, ns.pid)
		}
		if tpgid == pgrp {
			t.Fatalf("main process's group %d took the foreground of a terminal init does not control", pgrp)
		}
		if got := ns.wait(t); got != 0 {
			t.Fatalf("init exited %d", got)
		}
	})
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var unlock int32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); errno != 0 {
		t.Fatal(errno)
	}
	var n uint32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); errno != 0 {
		t.Fatal(errno)
	}
	slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return master, slave
}

// TestMemoryBudget: init's private dirty memory stays within 320 KiB (tini's is about 50) while it
// runs a program and reaps and forwards for it.
func TestMemoryBudget(t *testing.T) {
	ns := startInit(t, `trap 'echo got USR1' USR1; i=0; while [ $i -lt 100 ]; do (: &); i=$((i+1)); done; echo ready; while :; do sleep 0.02; done`)
	ns.expect(t, "ready")
	for i := 0; i < 5; i++ {
		syscall.Kill(ns.pid, syscall.SIGUSR1)
		ns.expect(t, "got USR1")
	}
	m := memory(t, ns.pid)
	threads, _ := os.ReadDir("/proc/" + strconv.Itoa(ns.pid) + "/task")
	t.Logf("graceful-init: %d threads, Rss %d kB, Pss %d kB, Private_Dirty %d kB, Private_Clean %d kB", len(threads), m["Rss"], m["Pss"], m["Private_Dirty"], m["Private_Clean"])
	if m["Private_Dirty"] > 320 {
		t.Fatalf("Private_Dirty %d kB, budget 320 kB", m["Private_Dirty"])
	}
}

// readMarker returns the trimmed content of a file the namespace wrote, or "" if there is none.
func readMarker(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}
