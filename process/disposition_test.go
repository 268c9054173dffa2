package process

import (
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildSigwaitInit compiles testdata/sigwaitinit.c, an init that takes TERM without a handler.
func buildSigwaitInit(t *testing.T) string {
	return buildTestProgram(t, "sigwaitinit", "-pthread")
}

// buildTestProgram compiles testdata/NAME.c with gcc (and flags) into a temp dir.
func buildTestProgram(t *testing.T, name string, flags ...string) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to build testdata/%s.c (make stack installs it): %v", name, err)
	}
	bin := filepath.Join(t.TempDir(), name)
	args := append([]string{"-O2", "-Wall"}, flags...)
	args = append(args, "-o", bin, filepath.Join("testdata", name+".c"))
	if out, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}

// awaitSigwait returns once a thread of pid is blocked in rt_sigtimedwait, the state in which
// /proc shows the awaited signals neither caught nor blocked.
func awaitSigwait(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		tids, err := threadsOf(pid)
		if err != nil {
			t.Fatal(err)
		}
		for _, tid := range tids {
			if nr, _, ok := threadSyscall(pid, tid); ok && slices.Contains(sigwaitSyscalls, nr) {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no thread of %d waits in rt_sigtimedwait", pid)
}

// An init that takes TERM without a handler is read as the kernel will treat it: tini and a
// multithreaded C daemon waiting in sigwaitinfo (whether its main thread or another one waits),
// catatonit-style signalfd readers, shells with a trap, and a PID 1 that drops TERM. Each one
// read as handling TERM then acts on it: it runs its shutdown and exits 0, where a SIGKILL in its
// place (what a PID 1 read as dropping TERM gets) would have cut the shutdown.
// An init that blocks every signal for a moment now and then, as a shell does around each fork, is
// read by what it does between those moments: a TERM-ignoring one is not taken for one that
// blocks TERM to take it later (on a slow kernel, a loaded machine, a shell's fork outlasted a
// few milliseconds of sampling).
func TestDispositionLooksPastMomentsWithEverySignalBlocked(t *testing.T) {
	blockloop := buildTestProgram(t, "blockloop")
	ns := startNamespace(t, "exec "+blockloop)
	ns.expect(t, "ready")
	for i := 0; i < 5; i++ {
		got, err := ReadDisposition(ns.init, unix.SIGTERM)
		if err != nil {
			t.Fatal(err)
		}
		if got != Ignored {
			t.Fatalf("look %d: init's TERM disposition = %q, want %q", i+1, got, Ignored)
		}
	}
}

func TestDispositionOfRealInits(t *testing.T) {
	sigwaitInit := buildSigwaitInit(t)
	tini, err := exec.LookPath("tini")
	if err != nil {
		t.Fatalf("tini is needed (make stack installs it): %v", err)
	}
	for _, tc := range []struct {
		name, script string
		want         Disposition
		waits        bool // a thread waits in rt_sigtimedwait once ready
		shutdown     string
	}{
		{"tini", "exec " + tini + ` -- sh -c 'echo ready; exec sleep 1000'`, Sigwait, true, ""},
		{"sigwait-main-thread", "exec " + sigwaitInit + " main", Sigwait, true, "clean"},
		{"sigwait-other-thread", "exec " + sigwaitInit + " worker", Sigwait, true, "clean"},
		{"signalfd", "exec " + sigwaitInit + " signalfd", Signalfd, false, "clean"},
		{"trap", `trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done`, Caught, false, ""},
		{"none", `echo ready; while :; do sleep 0.05; done`, Default, false, ""},
		{"ignored", `trap "" TERM; echo ready; while :; do sleep 0.05; done`, Ignored, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := startNamespace(t, tc.script)
			if tc.waits {
				awaitSigwait(t, ns.init)
			}
			got, err := ReadDisposition(ns.init, unix.SIGTERM)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("init's TERM disposition = %q, want %q", got, tc.want)
			}
			if handles, _ := WillHandle(ns.init, unix.SIGTERM); handles != tc.want.Handles() {
				t.Fatalf("WillHandle = %v for %q", handles, got)
			}
			if tc.shutdown == "" {
				return
			}
			if err := unix.Kill(ns.init, unix.SIGTERM); err != nil {
				t.Fatal(err)
			}
			ns.expect(t, tc.shutdown)
			if err := ns.cmd.Wait(); err != nil {
				t.Fatalf("init's namespace ended with %v, want a clean exit", err)
			}
			if st := ns.cmd.ProcessState.Sys().(syscall.WaitStatus); st.ExitStatus() != 0 {
				t.Fatalf("unshare exited %v", st)
			}
		})
	}
}
