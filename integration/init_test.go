package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
	"github.com/graceful-shim/graceful/shim"
)

// Tests of graceful-init, the opt-in PID 1 (annotation io.containerd.graceful.v2.init).

var withInit = map[string]string{"io.containerd.graceful.v2.init": "true"}

// initSpec is a graceful container running script under graceful-init, or without it.
func initSpec(script string, init bool) stack.Spec {
	spec := stack.Spec{Runtime: stack.GracefulRuntime, Script: script}
	if init {
		spec.Annotations = map[string]string{}
		for k, v := range withInit {
			spec.Annotations[k] = v
		}
	}
	return spec
}

func initName(init bool) string {
	if init {
		return "with-init"
	}
	return "without-init"
}

// namespaceProcs lists the processes in the PID namespace of c's init, init included.
func namespaceProcs(t *testing.T, c *stack.Container) []process.Status {
	t.Helper()
	ns, err := os.Readlink("/proc/" + strconv.Itoa(int(c.Task.Pid())) + "/ns/pid")
	if err != nil {
		t.Fatalf("the container's init is gone (%v); output: %q", err, c.Output)
	}
	entries, _ := os.ReadDir("/proc")
	var procs []process.Status
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if other, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err != nil || other != ns {
			continue
		}
		if st, err := process.ReadStatus(n); err == nil {
			procs = append(procs, st)
		}
	}
	return procs
}

func zombiesIn(procs []process.Status) int {
	n := 0
	for _, p := range procs {
		if p.State == 'Z' {
			n++
		}
	}
	return n
}

// waitNamespace polls c's PID namespace until cond holds, for up to 20s.
func waitNamespace(t *testing.T, c *stack.Container, what string, cond func([]process.Status) bool) []process.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		procs := namespaceProcs(t, c)
		if cond(procs) {
			return procs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 20s: %d processes, %d zombies", what, len(procs), zombiesIn(procs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A PID 1 that never waits (exec sleep) with an orphaned grandchild: without the init the orphan
// stays a zombie; with it, it is reaped.
func TestInitReapsAnOrphanThatPID1NeverWaitsFor(t *testing.T) {
	script := `sh -c 'sleep 0.2 &'
echo ready
exec sleep 100000`
	for _, init := range []bool{false, true} {
		t.Run(initName(init), func(t *testing.T) {
			c := start(t, initSpec(script, init))
			// The orphan's sleep ends 0.2s in: wait until only the expected processes live (the
			// orphan a zombie, or gone).
			want := 1 // without init: the main sleep as PID 1
			if init {
				want = 2 // graceful-init and the main sleep
			}
			procs := waitNamespace(t, c, "the orphan exits", func(ps []process.Status) bool {
				return len(ps)-zombiesIn(ps) == want
			})
			if init {
				// graceful-init reaps it; allow the reap to happen.
				procs = waitNamespace(t, c, "no zombie", func(ps []process.Status) bool { return zombiesIn(ps) == 0 })
			}
			z := zombiesIn(procs)
			t.Logf("%s: %d processes, %d zombies", initName(init), len(procs), z)
			if !init && z != 1 {
				t.Fatalf("without init: %d zombies, want the orphan left a zombie", z)
			}
			stopExpect(t, c, 15*time.Second, exitSIGKILL, exitSIGTERM)
		})
	}
}

// A tail -f /dev/null style PID 1 under graceful-init, with 500 short-lived orphans: no zombie at
// the end.
func TestInitReapsManyOrphans(t *testing.T) {
	script := `i=0; while [ $i -lt 500 ]; do sh -c 'sleep 0.5 &'; i=$((i+1)); done
echo ready
exec tail -f /dev/null`
	c := start(t, initSpec(script, true))
	procs := waitNamespace(t, c, "every orphan gone", func(ps []process.Status) bool { return len(ps) == 2 })
	if z := zombiesIn(procs); z != 0 {
		t.Fatalf("%d zombies", z)
	}
	stopExpect(t, c, 15*time.Second, exitSIGTERM)
}

// The main process exits 3 by itself while a helper traps TERM and needs 0.3s: under the init the
// helper's handler runs (without it the kernel's zap kills the helper), the task's exit status is
// the main process's 3, and a stop report (order main-exit) is published.
func TestInitDrainsWhenMainExitsByItself(t *testing.T) {
	script := childTraps("helper") + `echo ready
while [ ! -e /out/go ]; do sleep 0.05; done
exit 3`
	for _, init := range []bool{false, true} {
		t.Run(initName(init), func(t *testing.T) {
			reports := subscribeReports(t)
			c := start(t, initSpec(script, init))
			waitTrapped(t, c, "helper")
			releaseMain(t, c, 3)
			got := c.Marker("helper")
			if !init {
				if got != "" {
					t.Fatalf("without init: the helper cleaned up (%q), expected the zap", got)
				}
				return
			}
			if got != "clean" {
				t.Fatalf("the helper's TERM handler did not complete: marker %q", got)
			}
			if r := reports.NextReport(t, c.ID); r.Order != "main-exit" || r.Drain == nil || r.Drain.Totals["exited"] < 1 {
				t.Fatalf("report %+v: want order main-exit with the helper exited", r)
			}
		})
	}
}

// releaseMain lets a main process that waits for /out/go go on and exit, waits (up to 20 s) for
// the task's exit and fails the test unless its status is want, the main process's. It returns
// the time from the release to the exit.
func releaseMain(t *testing.T, c *stack.Container, want uint32) time.Duration {
	t.Helper()
	start := time.Now()
	if err := os.WriteFile(c.OutDir+"/go", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, st, err := c.WaitExit(start, 20*time.Second)
	if err != nil || st.ExitCode() != want {
		t.Fatalf("exit %d (%v), want the main process's %d", st.ExitCode(), err, want)
	}
	return time.Since(start)
}

// mainOf is the main process under graceful-init: the container's process whose parent is init
// (the only one, in the tests that use it).
func mainOf(t *testing.T, c *stack.Container) int {
	t.Helper()
	pid := int(c.Task.Pid())
	for _, p := range namespaceProcs(t, c) {
		if p.PPid == pid {
			return p.Tgid
		}
	}
	t.Fatalf("graceful-init %d has no child; output %q", pid, c.Output)
	return 0
}

// The main process killed by SIGKILL: the task exits 137, as the main process's own status.
func TestInitExitsWithTheMainProcessSignal(t *testing.T) {
	c := start(t, initSpec("echo ready\nexec sleep 100000", true))
	if st, err := process.ReadStatus(int(c.Task.Pid())); err != nil || st.Name != "graceful-init" {
		t.Fatalf("the container's PID 1 is %q (%v), want graceful-init", st.Name, err)
	}
	main := mainOf(t, c)
	start := time.Now()
	if err := syscall.Kill(main, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, st, err := c.WaitExit(start, 20*time.Second); err != nil || st.ExitCode() != exitSIGKILL {
		t.Fatalf("exit %d (%v), want 137", st.ExitCode(), err)
	}
}

// SIGHUP and SIGUSR1 sent to the container reach the main process through graceful-init.
func TestInitForwardsSignalsToMain(t *testing.T) {
	script := `trap 'echo got HUP' HUP
trap 'echo got USR1' USR1
trap 'exit 0' TERM
echo "env:[$GOMAXPROCS$GODEBUG$GRACEFUL_INIT_REEXEC]"
echo ready
` + loop
	c := start(t, initSpec(script, true))
	// graceful-init's own lean environment (set in the spec) does not reach the main process.
	if err := c.Output.WaitLine("env:[]", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1} {
		kill(t, c, sig)
		name := strings.TrimPrefix(process.SignalName(sig), "SIG")
		if err := c.Output.WaitLine("got "+name, 10*time.Second); err != nil {
			t.Fatalf("%s did not reach the main process: %v", name, err)
		}
	}
	stopExpect(t, c, 15*time.Second, exitOK)
}

// With the init, a stop drains what the main process leaves behind: the run.sh case (the main
// process has no TERM trap; it is not PID 1 any more, so TERM's default action ends it) and an
// exec'd process both get TERM and run their handlers.
func TestInitStopDrainsLeftoversAndExecs(t *testing.T) {
	script := childTraps("child") + "echo ready\nwait"
	c := start(t, initSpec(script, true))
	waitTrapped(t, c, "child")
	execTrapping(t, c, "exec")
	stopExpect(t, c, 15*time.Second, exitSIGTERM)
	for _, name := range []string{"child", "exec"} {
		if got := c.Marker(name); got != "clean" {
			t.Errorf("%s: TERM handler did not complete (marker %q)", name, got)
		}
	}
}

// A SIGKILL to a container under graceful-init ends everything at once, even with a TERM-ignoring
// child and a long grace.
func TestInitSigkillEndsAtOnce(t *testing.T) {
	spec := initSpec(ignoringChild+"trap 'exit 0' TERM\necho ready\n"+loop, true)
	spec.Annotations["io.containerd.graceful.v2.grace-period"] = "60s"
	c := start(t, spec)
	waitTrapped(t, c, "ignoring")
	kill(t, c, syscall.SIGTERM)
	start := time.Now()
	kill(t, c, syscall.SIGKILL)
	if took, st, err := c.WaitExit(start, 20*time.Second); err != nil || st.ExitCode() != exitSIGKILL {
		t.Fatalf("exit %d (%v) after %v, want 137 at once", st.ExitCode(), err, took)
	}
}

// A bad init annotation is refused at Create, naming it.
func TestInitBadValueRefusedAtCreate(t *testing.T) {
	spec := initSpec("echo ready", true)
	spec.Annotations["io.containerd.graceful.v2.init"] = "yes"
	spec.ID = "badinit-" + strconv.FormatInt(seq.Add(1), 10)
	_, err := theStack.Run(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "io.containerd.graceful.v2.init") || !strings.Contains(err.Error(), "true or false") {
		t.Fatalf("create with init=yes: %v", err)
	}
}

// A terminal container under graceful-init: the main process has the terminal and its process
// group is the terminal's foreground group, as with tini.
func TestInitTerminalContainer(t *testing.T) {
	spec := initSpec(`[ -t 0 ] && [ -t 1 ] && echo has-tty
cat /proc/$$/stat > /out/stat
trap 'exit 0' TERM
echo ready
`+loop, true)
	spec.Terminal = true
	c := start(t, spec)
	if err := c.Output.WaitLine("has-tty", 10*time.Second); err != nil {
		t.Fatalf("the main process has no terminal: %v", err)
	}
	fields := strings.Fields(c.Marker("stat"))
	if len(fields) < 8 || fields[4] != fields[7] || fields[7] == "-1" {
		t.Fatalf("stat %q: want the main process's group (field 5) to be the terminal's foreground group (field 8)", fields)
	}
	stopExpect(t, c, 15*time.Second, exitOK)
}

// An image with no shell, no /sbin and no libc (only a static binary), on a read-only rootfs, as
// user 65534: graceful-init runs it, and a stop reaches its handler.
func TestInitRunsAStaticBinaryReadOnlyAsNobody(t *testing.T) {
	spec := initSpec("", true)
	spec.Args = []string{"/app/gohandler", "app"}
	spec.ReadonlyRootfs = true
	spec.User = "65534:65534"
	spec.Mounts = []specs.Mount{
		{Destination: "/bin", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "ro"}},
		{Destination: "/app/gohandler", Type: "bind", Source: filepath.Join(theStack.Dir, "bin", "gohandler"), Options: []string{"rbind", "ro"}},
	}
	c := startUntil(t, spec, "ready app")
	// The handler writes its marker as 65534 on TERM.
	if err := os.Chmod(c.OutDir, 0o777); err != nil {
		t.Fatal(err)
	}
	main := mainOf(t, c)
	if st, err := process.ReadStatus(main); err != nil || st.Name != "gohandler" {
		t.Fatalf("main process %d: %+v (%v)", main, st, err)
	}
	stopExpect(t, c, 15*time.Second, exitOK)
	if got := c.Marker("app"); !strings.Contains(got, "terminated") {
		t.Fatalf("the static binary's TERM handler did not run: marker %q", got)
	}
}

// The init is a host binary running as PID 1: root inside an unprivileged container can neither
// write it through its path or /proc/1/exe nor remount it writable, and the host binary is
// unchanged afterwards.
func TestInitCannotBeWrittenFromTheContainer(t *testing.T) {
	host := filepath.Join(theStack.Dir, "bin", "graceful-init")
	before := fileHash(t, host)
	script := `for p in /dev/.graceful/graceful-init /proc/1/exe; do
  if (echo x >> $p) 2>/dev/null; then echo "wrote $p"; else echo "refused $p"; fi
  if (: > $p) 2>/dev/null; then echo "truncated $p"; fi
done
mount -o remount,rw,bind /dev/.graceful/graceful-init 2>/dev/null && echo remounted
grep -q ' /dev/.graceful/graceful-init ro,' /proc/self/mountinfo && echo mounted-ro
trap 'exit 0' TERM
echo ready
` + loop
	c := start(t, initSpec(script, true))
	out := c.Output.String()
	for _, want := range []string{"refused /dev/.graceful/graceful-init", "refused /proc/1/exe", "mounted-ro"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q: want %q", out, want)
		}
	}
	for _, bad := range []string{"wrote", "truncated", "remounted"} {
		if strings.Contains(out, bad) {
			t.Errorf("output %q: the container could change the init (%s)", out, bad)
		}
	}
	stopExpect(t, c, 15*time.Second, exitOK)
	if after := fileHash(t, host); after != before {
		t.Fatalf("the host's graceful-init changed: %s → %s", before, after)
	}
	// The container ran the shim's copy, which is unchanged too.
	if copyHash := fileHash(t, filepath.Join(shim.InitCopyDir, "graceful-init-"+before)); copyHash != before {
		t.Fatalf("the copy of graceful-init changed: %s", copyHash)
	}
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(data))
}

// The seed case, run.sh, the supervisor and the tini-like init, each under graceful-init: every
// handler runs, and the task exits with the main process's own status.
func TestInitClassicCases(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		trapped      []string
		exit         uint32
		clean        string // the marker that must read "clean"
	}{
		{"seed", seedScript, []string{"child"}, exitOK, "child"},
		// The main process is no longer PID 1: TERM's default action ends it.
		{"run.sh", runShScript, []string{"child"}, exitSIGTERM, "child"},
		{"supervisor", supervisorScript, []string{"worker"}, exitOK, ""},
		{"tini-like", tiniLikeScript, []string{"child", "grandchild"}, exitOK, "grandchild"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := start(t, initSpec(tc.script, true))
			waitTrapped(t, c, tc.trapped...)
			took := stopExpect(t, c, 15*time.Second, tc.exit)
			if took > 5*time.Second {
				t.Errorf("stop took %v: want about the handlers' own time, far below the 10s grace", took)
			}
			if tc.clean != "" && c.Marker(tc.clean) != "clean" {
				t.Errorf("%s: TERM handler did not complete", tc.clean)
			}
			if tc.name == "supervisor" {
				if r, first := c.Marker("respawns"), strings.SplitN(c.Marker("order"), "\n", 2)[0]; r != "" || first != "init" {
					t.Errorf("respawns %q, first TERM to %q: want none, and the supervisor told first", r, first)
				}
			}
		})
	}
}

// A stop that comes right after the start, before the shim has found graceful-init's main
// process, still ends: the stop waits for the search, then signals graceful-init and drains the
// rest once the main process has exited. It used to hold graceful-init's exit with the tracer
// instead, while graceful-init, which exits only once it is alone, waited for that drain: the stop
// hung until the SIGKILL.
func TestInitStopRightAfterStartEnds(t *testing.T) {
	script := childTraps("child") + `trap "exit 0" TERM
echo ready
` + loop
	for i := 0; i < 5; i++ {
		spec := initSpec(script, true)
		spec.ID = fmt.Sprintf("init-stop-at-start-%d-%d", i, seq.Add(1))
		c, err := theStack.Run(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Delete() })
		took, st, err := c.Stop(stackContext(), syscall.SIGTERM, 8*time.Second)
		if err != nil {
			t.Fatalf("stop %d right after the start: %v after %v", i, err, took)
		}
		// TERM may reach the main process before its trap is set.
		if code := st.ExitCode(); code != exitOK && code != exitSIGTERM {
			t.Fatalf("stop %d: exit status %d, want %d or %d", i, code, exitOK, exitSIGTERM)
		}
	}
}

// A main process that starts a daemon and exits at once (`sh -c 'daemon &'`), before the shim
// could look for it: the daemon, an orphan of graceful-init, is never taken for the main process.
// The main process's exit drains the rest (the daemon runs its handler) and the task exits 0, the
// main process's status, by itself.
func TestInitMainThatExitsAtOnceIsNotMistaken(t *testing.T) {
	// The main process exits as soon as the daemon's trap is set (a busy wait: no sleep, so that
	// it still exits within a few milliseconds).
	script := `sh -c 'trap "echo clean > /out/daemon; exit 0" TERM; : > /out/trapped; ` + loop + `' &
until [ -e /out/trapped ]; do :; done
echo ready
exit 0`
	for i := 0; i < 3; i++ {
		reports := subscribeReports(t)
		c := start(t, initSpec(script, true))
		start := time.Now()
		_, st, err := c.WaitExit(start, 20*time.Second)
		if err != nil || st.ExitCode() != 0 {
			t.Fatalf("run %d: exit %d (%v): want the task to end by itself with the main process's 0 (the daemon taken for the main process keeps it running)", i, st.ExitCode(), err)
		}
		if got := c.Marker("daemon"); got != "clean" {
			t.Fatalf("run %d: the daemon was not drained (marker %q)", i, got)
		}
		if r := reports.NextReport(t, c.ID); r.Order != "main-exit" {
			t.Fatalf("run %d: report %+v: want order main-exit", i, r)
		}
	}
}
