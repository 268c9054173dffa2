package integration

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/graceful-shim/graceful/integration/stack"
)

// tiniStatic is Debian's static tini (the init behind `docker run --init` and many images'
// ENTRYPOINT ["tini", "--"]), bind-mounted into the busybox containers at tiniAt.
const (
	tiniStatic = "/usr/bin/tini-static"
	tiniAt     = "/dev/.tini"
)

// tiniMount bind-mounts tini-static, read-only, at tiniAt.
func tiniMount() specs.Mount {
	return specs.Mount{Destination: tiniAt, Type: "bind", Source: tiniStatic, Options: []string{"bind", "ro", "nosuid", "nodev"}}
}

// helperTraps starts a helper whose TERM handler needs 0.3 s to flush, then writes "clean".
func helperTraps(name string) string {
	return `sh -c 'trap "sleep 0.3; echo clean > /out/` + name + `; exit 0" TERM; echo trapped ` + name + `; ` + loop + `' &` + "\n"
}

// tini as PID 1: the app exits at once on the TERM tini forwards to it, and tini exits with it,
// while a helper the app started still flushes. tini waits for signals in sigtimedwait, where /proc
// shows TERM neither caught nor blocked: graceful reads it as waiting for TERM, holds tini at its
// exit (init-first) and lets the helper finish; the stock shim's stop zaps the helper.
func TestTiniAsInitLetsTheHelperFinish(t *testing.T) {
	app := helperTraps("helper") + `trap "exit 0" TERM; echo ready; ` + loop
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			reports := subscribeReports(t)
			c := start(t, stack.Spec{Runtime: runtime, Args: []string{tiniAt, "--", "sh", "-c", app}, Mounts: []specs.Mount{tiniMount()}})
			waitTrapped(t, c, "helper")
			took := stopExpect(t, c, 15*time.Second, exitOK)
			if !zappedUnderStock(t, c.Marker("helper"), runtime, "helper", took) {
				return
			}
			expectSigwaitInitFirst(t, reports.NextReport(t, c.ID))
		})
	}
}

// zappedUnderStock checks a stopped container's marker (its value got), written at the end of a
// TERM handler: empty under the stock shim (the kernel's zap cut the handler), "clean" under
// graceful. It reports whether the runtime is graceful, for the caller's own checks.
func zappedUnderStock(t *testing.T, got, runtime, marker string, took time.Duration) bool {
	t.Helper()
	t.Logf("%s: stop took %v, %s marker %q", short(runtime), took, marker, got)
	if runtime == stack.StockRuntime {
		if got != "" {
			t.Fatalf("stock shim: %s finished (%q), expected the zap to cut it", marker, got)
		}
		return false
	}
	if got != "clean" {
		t.Fatalf("graceful: the %s's handler did not finish (marker %q)", marker, got)
	}
	return true
}

// expectSigwaitInitFirst checks that a stop read init as waiting in sigwait and stopped it first
// with its TERM.
func expectSigwaitInitFirst(t *testing.T, r *stack.StopReport) {
	t.Helper()
	if r.InitDisposition != "sigwait" || r.Order != "init-first" || r.InitSignal != "SIGTERM" {
		t.Fatalf("report: init %q, order %q, init signal %q, notes %q; want sigwait, init-first, SIGTERM",
			r.InitDisposition, r.Order, r.InitSignal, r.Notes)
	}
}

// buildSigwaitInit builds process/testdata/sigwaitinit.c (static, for the busybox image) into a
// directory to bind-mount at /sw.
func buildSigwaitInit(t *testing.T) string {
	t.Helper()
	return buildStatic(t, "sigwaitinit", filepath.Join("..", "process", "testdata", "sigwaitinit.c"))
}

// expectDroppedThenKilled stops c, under the stock shim, with sig, which its PID 1 (a script
// without a trap) drops: the container runs on for 2 s, until a SIGKILL, and the work marked by
// marker is lost.
func expectDroppedThenKilled(t *testing.T, c *stack.Container, sig syscall.Signal, marker string) {
	t.Helper()
	took, _, err := c.Stop(stackContext(), sig, 2*time.Second)
	if !errors.Is(err, stack.ErrStillRunning) {
		t.Fatalf("stock shim: want the script to drop %v and run on, got an exit after %v (%v)", sig, took, err)
	}
	if _, _, err := c.Stop(stackContext(), syscall.SIGKILL, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := c.Marker(marker); got != "" {
		t.Fatalf("stock shim: %s finished (%q) although only SIGKILL reached it", marker, got)
	}
}

// A multithreaded C daemon as PID 1 blocks TERM in every thread and waits for it in sigwaitinfo,
// in its main thread or in another one. Graceful gives it TERM (never a SIGKILL in its place):
// its own 0.3 s shutdown completes, it exits 0, and its child is drained only after that (the
// child's handler sees the daemon's shutdown mark). Under the stock shim the daemon's shutdown
// completes too, and the kernel zaps the child.
func TestSigwaitDaemonShutsDownBeforeItsChildIsDrained(t *testing.T) {
	dir := buildSigwaitInit(t)
	child := `trap "[ -e /out/init-done ] && echo after > /out/order || echo before > /out/order; sleep 0.3; echo clean > /out/child; exit 0" TERM; echo trapped child; ` + loop
	for _, mode := range []string{"main", "worker"} {
		for _, runtime := range runtimes {
			t.Run(mode+"/"+short(runtime), func(t *testing.T) {
				reports := subscribeReports(t)
				c := start(t, stack.Spec{Runtime: runtime,
					Args:   []string{"env", "SHUTDOWN_MARK=/out/init-done", "/sw/sigwaitinit", mode, "sh", "-c", child},
					Mounts: []specs.Mount{{Destination: "/sw", Type: "bind", Source: dir, Options: []string{"rbind", "ro"}}}})
				waitTrapped(t, c, "child")
				if threads := countThreads(t, int(c.Task.Pid())); threads < 2 {
					t.Fatalf("init has %d threads, want a multithreaded init", threads)
				}
				took := stopExpect(t, c, 15*time.Second, exitOK)
				if got := c.Marker("init-done"); got != "done" {
					t.Fatalf("%s: the daemon's own shutdown did not complete (mark %q)", short(runtime), got)
				}
				if !zappedUnderStock(t, c.Marker("child"), runtime, "child", took) {
					return
				}
				if order := c.Marker("order"); order != "after" {
					t.Fatalf("the child was signalled %q the daemon's shutdown, want after", order)
				}
				expectSigwaitInitFirst(t, reports.NextReport(t, c.ID))
			})
		}
	}
}

// An entrypoint script without a trap starts a helper in the background and runs its server in
// the foreground (no exec). The script drops TERM (PID 1 without a handler), so the stop is
// children-first: the server exits at once on its TERM, the script ends, and init exits during
// the drain while the helper still flushes. Graceful holds init at its exit until the drain is
// over: the helper finishes and the script's exit status (the server's, 0) is kept. The stock
// shim's TERM is dropped by the script: the container runs on until a SIGKILL, which cuts the
// helper.
func TestTraplessScriptWhoseServerExitsFirst(t *testing.T) {
	script := helperTraps("helper") + `sh -c 'trap "exit 0" TERM; echo trapped server; ` + loop + `'` + "\n"
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			reports := subscribeReports(t)
			c := startUntil(t, stack.Spec{Runtime: runtime, Script: script}, "trapped server")
			waitTrapped(t, c, "helper")
			if runtime == stack.StockRuntime {
				expectDroppedThenKilled(t, c, syscall.SIGTERM, "helper")
				return
			}
			took := stopExpect(t, c, 15*time.Second, exitOK)
			t.Logf("graceful: stop took %v", took)
			if got := c.Marker("helper"); got != "clean" {
				t.Fatal("graceful: the helper's handler did not finish: init's exit was not held")
			}
			r := reports.NextReport(t, c.ID)
			if r.Order != "children-first" || r.InitDisposition != "drops" || r.TracerStart == 0 {
				t.Fatalf("report: order %q, init %q, tracer start %v, notes %q; want children-first, drops, a tracer",
					r.Order, r.InitDisposition, r.TracerStart, r.Notes)
			}
			if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "held at its exit") }) {
				t.Fatalf("report notes %q: want init's exit during the drain noted", r.Notes)
			}
		})
	}
}

// An image whose STOPSIGNAL is SIGQUIT (nginx, php-fpm: a graceful quit; SIGTERM is their fast
// shutdown) behind an entrypoint script without a trap: the server, in the foreground, quits
// gracefully on QUIT (0.3 s) and drops its work on TERM; a helper handles TERM only. Graceful gives
// QUIT to the server and TERM to the helper: the server's work completes, the helper finishes, and
// the script's exit is held until both are done. The stock shim's QUIT is dropped by the script:
// the container runs on until a SIGKILL.
func TestStopSignalReachesTheProcessesThatHandleIt(t *testing.T) {
	server := `sh -c 'trap "sleep 0.3; echo graceful > /out/server; exit 0" QUIT; trap "echo fast > /out/server; exit 0" TERM; echo trapped server; ` + loop + `'`
	script := helperTraps("helper") + server + "\n"
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			reports := subscribeReports(t)
			c := startUntil(t, stack.Spec{Runtime: runtime, Script: script,
				Labels: map[string]string{"io.containerd.image.config.stop-signal": "SIGQUIT"}}, "trapped server")
			waitTrapped(t, c, "helper")
			if runtime == stack.StockRuntime {
				expectDroppedThenKilled(t, c, syscall.SIGQUIT, "server")
				return
			}
			took, st, err := c.Stop(stackContext(), syscall.SIGQUIT, 15*time.Second)
			if err != nil || st.ExitCode() != exitOK {
				t.Fatalf("stop: %v, exit code %d, want %d", err, st.ExitCode(), exitOK)
			}
			t.Logf("graceful: stop took %v", took)
			if got := c.Marker("server"); got != "graceful" {
				t.Fatalf("the server's shutdown was %q, want graceful (it got TERM, not its stop signal QUIT)", got)
			}
			if got := c.Marker("helper"); got != "clean" {
				t.Fatal("the helper's TERM handler did not finish")
			}
			r := reports.NextReport(t, c.ID)
			if r.Requested != "SIGQUIT" || r.Drain == nil || r.Drain.StopSignal != "SIGQUIT" || r.Drain.Totals["killed"] != 0 {
				t.Fatalf("report: requested %q, drain %+v", r.Requested, r.Drain)
			}
			for _, p := range r.Drain.Processes {
				if slices.Contains(p.Signals, "SIGQUIT") && slices.Contains(p.Signals, "SIGTERM") {
					t.Fatalf("%q got both SIGQUIT and SIGTERM: %v", p.Command, p.Signals)
				}
			}
		})
	}
}

// The same with enough processes to signal the namespace at once: one kill(-1) cannot give each
// process its own signal, so the drain goes member by member and says so; the server still gets
// QUIT and no process gets both.
func TestStopSignalReachesTheProcessesThatHandleItAmongMany(t *testing.T) {
	const children = 150 // enough to signal at once (see TestDrainSignalsTheNamespaceAtOnce)
	server := `sh -c 'trap "sleep 0.3; echo graceful > /out/server; exit 0" QUIT; trap "echo fast > /out/server; exit 0" TERM; echo trapped server; ` + loop + `'`
	script := helperTraps("helper")
	for i := 0; i < children; i++ {
		script += `sh -c 'trap "exit 0" TERM; ` + loop + `' &` + "\n"
	}
	script += server + "\n"
	reports := subscribeReports(t)
	c := startUntil(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script,
		Labels: map[string]string{"io.containerd.image.config.stop-signal": "SIGQUIT"}}, "trapped server")
	waitTrapped(t, c, "helper")
	_, st, err := c.Stop(stackContext(), syscall.SIGQUIT, 15*time.Second)
	if err != nil || st.ExitCode() != exitOK {
		t.Fatalf("stop: %v, exit code %d, want %d", err, st.ExitCode(), exitOK)
	}
	if got := c.Marker("server"); got != "graceful" {
		t.Fatalf("the server's shutdown was %q, want graceful", got)
	}
	if got := c.Marker("helper"); got != "clean" {
		t.Fatal("the helper's TERM handler did not finish")
	}
	r := reports.NextReport(t, c.ID)
	if r.Drain == nil || r.Drain.AtOnce != 0 || r.Drain.StopSignal != "SIGQUIT" || r.Drain.Totals["killed"] != 0 ||
		!slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "member by member") }) {
		t.Fatalf("report: notes %q, drain %+v: want a drain member by member with SIGQUIT for those that handle it", r.Notes, r.Drain)
	}
	for _, p := range r.Drain.Processes {
		if slices.Contains(p.Signals, "SIGQUIT") && slices.Contains(p.Signals, "SIGTERM") {
			t.Fatalf("%q got both SIGQUIT and SIGTERM: %v", p.Command, p.Signals)
		}
	}
}

// helperForks starts a helper whose TERM handler flushes through a child process (a log shipper's
// flush, 0.3 s): the child writes "clean" at its end, which a TERM (or the kernel's zap) prevents.
// The handler lets a second TERM pass (under a group-forwarding init, both init and the drain send
// one). The helper waits in the wait builtin, so that its handler runs, and forks, as soon as the
// signal comes.
func helperForks(name string) string {
	return `sh -c '` + helperForksScript(name) + `' &` + "\n"
}

// helperForksScript is the script of helperForks, for sh -c.
func helperForksScript(name string) string {
	return `flush() { trap : TERM; sh -c "sleep 0.3; echo clean > /out/` + name + `"; exit 0; }; trap flush TERM; echo trapped ` + name + `; ` + waitLoop
}

// waitLoop idles in the shell's wait builtin, where a trapped signal runs its handler at once
// (in a foreground command's wait, the shell runs it only once the command is done).
const waitLoop = `while :; do sleep 1 & wait $!; done`

// tini -g passes TERM on to its child's whole process group: the app shuts down in 0.2 s, and a
// helper beside it starts its flush in a child process at once. Graceful holds tini at its exit
// (init-first) and drains what is left without signalling the processes created just after tini
// got TERM: the helper's flush completes. Under the stock shim the kernel zaps the flush when tini
// exits. (A container large enough to be signalled at once is not spared: see docs/design.md, Decisions and limits.)
func TestGroupForwardingInitLetsForkingHandlersFinish(t *testing.T) {
	// slow: the app takes 0.9 s, and the helper's flush starts its second stage's sleep 0.6 s
	// in, past the first 0.5 s but before the drain: the work of a spared process is spared too
	// (a TERMed sleep leaves no marker). The flush ends 0.2 s after the app, so that the stock
	// shim's zap cuts it also on a slow machine (ending together, it won the race once under
	// emulation).
	slowHelper := `sh -c 'flush() { trap : TERM; sh -c "sleep 0.6; sh -c \"sleep 0.5 && echo clean > /out/helper\""; exit 0; }; trap flush TERM; echo trapped helper; ` + waitLoop + `' &` + "\n"
	for _, shape := range []struct{ name, app string }{
		{"quick", helperForks("helper") + `trap "sleep 0.2; exit 0" TERM; echo ready; ` + waitLoop},
		{"slow", slowHelper + `trap "sleep 0.9; exit 0" TERM; echo ready; ` + waitLoop},
	} {
		for _, runtime := range runtimes {
			t.Run(shape.name+"/"+short(runtime), func(t *testing.T) {
				reports := subscribeReports(t)
				c := start(t, stack.Spec{Runtime: runtime, Args: []string{tiniAt, "-g", "--", "sh", "-c", shape.app}, Mounts: []specs.Mount{tiniMount()}})
				waitTrapped(t, c, "helper")
				took := stopExpect(t, c, 15*time.Second, exitOK)
				if !zappedUnderStock(t, c.Marker("helper"), runtime, "helper", took) {
					return
				}
				r := reports.NextReport(t, c.ID)
				expectSigwaitInitFirst(t, r)
				if r.Drain == nil || r.Drain.Totals["killed"] != 0 ||
					!slices.ContainsFunc(r.Drain.Notes, func(n string) bool { return strings.Contains(n, "without the drain signal") }) {
					t.Fatalf("report %s: want the handler's processes left out of the drain signal", reportJSON(r))
				}
			})
		}
	}
}
