package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// loadContainers is how many containers TestConcurrentStopsUnderLoad stops at once:
// GRACEFUL_LOAD_N, 10 by default (make test-load runs 50).
func loadContainers(t *testing.T) int {
	if v := os.Getenv("GRACEFUL_LOAD_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("GRACEFUL_LOAD_N=%q: want a positive whole number", v)
		}
		return n
	}
	return 10
}

// Many containers, each with a TERM-handling child, stopped concurrently on this 2-core machine:
// every child's handler runs, and once they are deleted no shim, container process, mount,
// cgroup or runc state is left.
func TestConcurrentStopsUnderLoad(t *testing.T) {
	n := loadContainers(t)
	script := childTraps("child") + `trap "exit 0" TERM
echo ready
` + loop
	var cs []*stack.Container
	for i := 0; i < n; i++ {
		c, err := theStack.Run(context.Background(), stack.Spec{ID: fmt.Sprintf("load-%d-%d", i, seq.Add(1)), Runtime: stack.GracefulRuntime, Script: script})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		if err := c.Output.WaitLine("trapped child", 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	took := make([]time.Duration, n)
	errs := make([]error, n)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			took[i], _, errs[i] = c.Stop(context.Background(), syscall.SIGTERM, 60*time.Second)
		}()
	}
	wg.Wait()
	var slowest time.Duration
	for i, c := range cs {
		if errs[i] != nil {
			t.Errorf("%s: %v", c.ID, errs[i])
		}
		if got := c.Marker("child"); got != "clean" {
			t.Errorf("%s: child handler did not complete", c.ID)
		}
		slowest = max(slowest, took[i])
	}
	t.Logf("%d concurrent stops, slowest %v", n, slowest)
	for _, c := range cs {
		if err := c.Delete(); err != nil {
			t.Errorf("delete %s: %v", c.ID, err)
		}
		assertNoTraces(t, c.ID)
	}
}

// assertNoTraces fails the test if anything of container id is left on the host once containerd's
// cleanup (which may still run a `shim delete`) is done: it waits up to 10s for that.
func assertNoTraces(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(processesMentioning(id)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if procs := processesMentioning(id); len(procs) > 0 {
		t.Errorf("%s: processes left: %v", id, procs)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), id) {
		t.Errorf("%s: mounts left", id)
	}
	for _, ctrl := range []string{"pids", "memory", "freezer", "unified"} {
		matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", ctrl, "*", id))
		if len(matches) > 0 {
			t.Errorf("%s: cgroups left: %v", id, matches)
		}
	}
	if stack.Cgroup2() {
		if matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", id)); len(matches) > 0 {
			t.Errorf("%s: cgroups left: %v", id, matches)
		}
	}
	runcState, _ := filepath.Glob(filepath.Join("/run/containerd/runc", "*", id))
	if len(runcState) > 0 {
		t.Errorf("%s: runc state left: %v", id, runcState)
	}
}

// processesMentioning lists the processes whose command line contains s.
func processesMentioning(s string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), s) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

// containerd SIGKILLed and restarted during a drain: the drain completes in the shim, the task
// reaches STOPPED and its exit is reported once containerd is back.
func TestContainerdRestartDuringDrain(t *testing.T) {
	script := `sh -c 'trap "sleep 1.5; echo clean > /out/child; exit 0" TERM; echo trapped child; ` + loop + `' &
trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
	waitTrapped(t, c, "child")
	ctx := stackContext()
	if err := c.Task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := theStack.RestartDaemon(ctx); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	exit, err := c.Task.Wait(waitCtx)
	if err != nil {
		t.Fatalf("wait after the restart: %v", err)
	}
	select {
	case st := <-exit:
		if st.Error() != nil {
			t.Fatalf("exit status after the restart: %v", st.Error())
		}
	case <-waitCtx.Done():
		t.Fatal("no exit reported after containerd restarted")
	}
	if got := c.Marker("child"); got != "clean" {
		t.Fatalf("the drain did not complete across the restart")
	}
	st, err := c.Task.Status(ctx)
	if err != nil || st.Status != "stopped" {
		t.Fatalf("status %v (%v), want stopped", st.Status, err)
	}
}

// The shim SIGKILLed during a drain (and a hold): containerd's cleanup leaves no process, mount,
// cgroup or tracer behind.
func TestShimKilledDuringDrain(t *testing.T) {
	for _, order := range []string{"init-first", "children-first"} {
		t.Run(order, func(t *testing.T) {
			script := ignoringChild + `trap "exit 0" TERM
echo ready
` + loop
			annotations := orderAnnotation(order)
			annotations["io.containerd.graceful.v2.grace-period"] = "30s"
			id := fmt.Sprintf("shimkill-%s-%d", order, seq.Add(1))
			c, err := theStack.Run(context.Background(), stack.Spec{ID: id, Runtime: stack.GracefulRuntime, Script: script, Annotations: annotations})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Output.WaitLine("trapped ignoring", 20*time.Second); err != nil {
				t.Fatal(err)
			}
			initPid := int(c.Task.Pid())
			shim := shimOf(t, c)
			if err := c.Task.Kill(stackContext(), syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if order == "init-first" {
				waitHeld(t, initPid)
			}
			syscall.Kill(shim, syscall.SIGKILL)
			if _, _, err := c.WaitExit(time.Now(), 20*time.Second); err != nil {
				t.Fatalf("no exit after the shim was killed: %v", err)
			}
			if err := c.Delete(); err != nil {
				t.Fatalf("delete: %v", err)
			}
			assertNoTraces(t, id)
			if left := findTracers(initPid); len(left) > 0 {
				t.Fatalf("tracers left: %v", left)
			}
		})
	}
}

// A fork storm inside the container during a drain: the stop still completes within grace + 3s.
func TestForkStormDuringDrain(t *testing.T) {
	script := `sh -c 'trap "" TERM; echo trapped storm; while :; do sh -c "trap \"\" TERM; sleep 2" & sleep 0.005; done' &
trap "exit 0" TERM
echo ready
` + loop
	grace := time.Second
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: map[string]string{
		"io.containerd.graceful.v2.grace-period": "1s",
		"io.containerd.graceful.v2.stop-order":   "children-first",
	}})
	waitTrapped(t, c, "storm")
	took := stop(t, c, 30*time.Second)
	t.Logf("fork storm: stop took %v", took)
	if took >= grace+3*time.Second {
		t.Fatalf("stop took %v, want under %v (far below the 10 s default grace)", took, grace+3*time.Second)
	}
}

// A process stopped with SIGSTOP still gets to run its TERM handler: SIGCONT follows the drain
// signal.
func TestStoppedProcessHandlesTerm(t *testing.T) {
	script := `sh -c 'trap "echo handled > /out/stopped; exit 0" TERM; echo trapped stopped; kill -STOP $$; ` + loop + `' &
trap "exit 0" TERM
echo ready
` + loop
	for _, order := range []string{"init-first", "children-first"} {
		t.Run(order, func(t *testing.T) {
			c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: orderAnnotation(order)})
			waitTrapped(t, c, "stopped")
			waitStoppedMember(t, int(c.Task.Pid()))
			stopExpect(t, c, 15*time.Second, exitOK)
			if got := c.Marker("stopped"); got != "handled" {
				t.Fatalf("the stopped process did not handle TERM")
			}
		})
	}
}

// waitStoppedMember waits until a process of the container is stopped (state T).
func waitStoppedMember(t *testing.T, initPid int) {
	t.Helper()
	scope, err := process.ScopeOf(initPid)
	if err != nil {
		t.Fatal(err)
	}
	defer scope.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		members, _ := scope.Members()
		for _, pid := range members {
			if st, err := process.ReadStatus(pid); err == nil && st.State == 'T' {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no stopped process in the container")
}

// sentinelTraps makes a shell record every catchable signal it receives into /out/SENTINEL. A
// WINCH (numbered above all of those) makes it write /out/SENTINEL.flush: the shell runs pending
// traps in signal order, so once a WINCH sent after a stray signal is recorded, that signal is
// recorded too.
const sentinelTraps = `for s in HUP INT QUIT USR1 USR2 TERM CONT; do trap "echo $s >> /out/SENTINEL" $s; done; trap "echo flushed > /out/SENTINEL.flush" WINCH; `

// sentinel is a shell with sentinelTraps; it prints "trapped SENTINEL" once they are set.
const sentinel = sentinelTraps + `echo trapped SENTINEL; ` + loop

func sentinelScript(name string) string {
	return strings.ReplaceAll(sentinel, "SENTINEL", name)
}

// sentinelContainer is the script of a container whose init records every catchable signal into
// /out/NAME-init and whose child, a subshell that prints "pid $!" and "trapped NAME", into
// /out/NAME.
func sentinelContainer(name string) string {
	return "(" + sentinelScript(name) + ") & echo pid $!; " + strings.ReplaceAll(sentinelTraps, "SENTINEL", name+"-init") + "echo ready; " + loop
}

// Isolation: a sentinel on the host, one in another container, and one in the container that owns
// a PID namespace the stopped container joins (as a pod's sandbox) record every signal they get.
// Stopping the container (own PID namespace, joined namespace, host PID) never reaches them.
func TestStopNeverSignalsOutsideTheContainer(t *testing.T) {
	hostFile := filepath.Join(t.TempDir(), "host")
	host := exec.Command("sh", "-c", strings.ReplaceAll(strings.ReplaceAll(sentinel, "/out/SENTINEL", hostFile), "SENTINEL", "host"))
	hostOut := stack.NewOutput()
	host.Stdout = hostOut
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Process.Kill(); host.Wait() })
	if err := hostOut.WaitLine("trapped host", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	alive := []func(){holdAlive(t, "host sentinel", host.Process.Pid)}
	other := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: sentinelContainer("other")})
	waitTrapped(t, other, "other")
	otherSentinel := sentinelPid(t, other)
	alive = append(alive, holdAlive(t, "init of other", int(other.Task.Pid())), holdAlive(t, "sentinel of other", otherSentinel))
	owner := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: sentinelContainer("owner")})
	waitTrapped(t, owner, "owner")
	ownerSentinel := sentinelPid(t, owner)
	alive = append(alive, holdAlive(t, "init of owner", int(owner.Task.Pid())), holdAlive(t, "sentinel of owner", ownerSentinel))
	flushes := []struct {
		what string
		pid  int
		file string
	}{
		{"host sentinel", host.Process.Pid, hostFile + ".flush"},
		{"sentinel of other", otherSentinel, filepath.Join(other.OutDir, "other.flush")},
		{"init of other", int(other.Task.Pid()), filepath.Join(other.OutDir, "other-init.flush")},
		{"sentinel of owner", ownerSentinel, filepath.Join(owner.OutDir, "owner.flush")},
		{"init of owner", int(owner.Task.Pid()), filepath.Join(owner.OutDir, "owner-init.flush")},
	}

	victim := childTraps("child") + `trap "exit 0" TERM
echo ready
` + loop
	cases := []struct {
		name string
		spec stack.Spec
	}{
		{"own-namespace", stack.Spec{Runtime: stack.GracefulRuntime, Script: victim}},
		{"joined-namespace", stack.Spec{Runtime: stack.GracefulRuntime, Script: victim, PIDNamespace: fmt.Sprintf("/proc/%d/ns/pid", owner.Task.Pid())}},
		{"host-pid", stack.Spec{Runtime: stack.GracefulRuntime, Script: victim, HostPID: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range []string{"init-first", "children-first"} {
				spec := tc.spec
				spec.Annotations = orderAnnotation(order)
				c := start(t, spec)
				waitTrapped(t, c, "child")
				stopExpect(t, c, 15*time.Second, exitOK)
				if got := c.Marker("child"); got != "clean" {
					t.Errorf("%s: the container's own child was not drained", order)
				}
			}
		})
	}
	for _, check := range alive {
		check()
	}
	// Every stop is over: a stray signal has been sent by now, and is recorded once a WINCH sent
	// after it is.
	for _, f := range flushes {
		if err := syscall.Kill(f.pid, syscall.SIGWINCH); err != nil {
			t.Fatalf("WINCH to the %s: %v", f.what, err)
		}
		if err := stack.WaitFile(f.file, 10*time.Second); err != nil {
			t.Fatalf("the %s did not record its WINCH: %v", f.what, err)
		}
	}
	if data, err := os.ReadFile(hostFile); err == nil {
		t.Errorf("host sentinel received %q", data)
	}
	for _, c := range []*stack.Container{other, owner} {
		for _, f := range []string{"other", "other-init", "owner", "owner-init"} {
			if got := c.Marker(f); got != "" {
				t.Errorf("sentinel %s in %s received %q", f, c.ID, got)
			}
		}
		if st, err := c.Task.Status(stackContext()); err != nil || st.Status != "running" {
			t.Errorf("%s is %v (%v), want running", c.ID, st.Status, err)
		}
	}
}

// sentinelPid returns the host PID of the sentinel of a container whose script printed
// "pid $!" (its PID in the container's namespace), found among the container's processes.
func sentinelPid(t *testing.T, c *stack.Container) int {
	t.Helper()
	var inner int
	for _, line := range strings.Split(c.Output.String(), "\n") {
		fmt.Sscanf(line, "pid %d", &inner)
	}
	scope, err := process.ScopeOf(int(c.Task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	defer scope.Close()
	members, _ := scope.Members()
	for _, pid := range members {
		if st, err := process.ReadStatus(pid); err == nil && len(st.NSpid) > 0 && st.NSpid[len(st.NSpid)-1] == inner {
			return pid
		}
	}
	t.Fatalf("%s: no sentinel with PID %d in the container (%q)", c.ID, inner, c.Output.String())
	return 0
}
