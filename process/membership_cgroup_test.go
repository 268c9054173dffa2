package process

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/internal/testguard"
)

// cgroupRoot returns a mounted hierarchy to create test cgroups in: the unified one when
// /sys/fs/cgroup is cgroup v2, else the v1 pids controller.
func cgroupRoot(t *testing.T) (root, hierarchy string) {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "/sys/fs/cgroup", "0:"
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err != nil {
		t.Fatalf("no cgroup hierarchy to test in: %v", err)
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range parseCgroups(data) {
		if strings.HasSuffix(e.hierarchy, ":pids") {
			return "/sys/fs/cgroup/pids", e.hierarchy
		}
	}
	t.Fatal("no pids hierarchy in /proc/self/cgroup")
	return "", ""
}

// testCgroups creates base/<names> under root (removed at cleanup, after the test's processes).
func testCgroups(t *testing.T, root string, names ...string) string {
	t.Helper()
	base := filepath.Join(root, "graceful-test-"+strconv.Itoa(os.Getpid()))
	dirs := []string{base}
	for _, n := range names {
		dirs = append(dirs, filepath.Join(base, n))
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := len(dirs) - 1; i >= 0; i-- {
			for j := 0; j < 100 && os.Remove(dirs[i]) != nil; j++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	return base
}

// moveTo moves pid into cgroup dir.
func moveTo(t *testing.T, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatalf("move %d to %s: %v", pid, dir, err)
	}
}

// sleeper starts a process in the caller's PID namespace, killed at cleanup.
func sleeper(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := testguard.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// A container sharing the caller's PID namespace: a process in a sub-cgroup of its init's is a
// member, one in a sibling cgroup (even one whose name extends init's) or the parent is not.
func TestCgroupScopeMembersIncludeSubCgroups(t *testing.T) {
	root, _ := cgroupRoot(t)
	base := testCgroups(t, root, "ctr", "ctr/sub", "ctr-sibling")
	init, sub, peer, sibling, parent := sleeper(t), sleeper(t), sleeper(t), sleeper(t), sleeper(t)
	moveTo(t, filepath.Join(base, "ctr"), init)
	moveTo(t, filepath.Join(base, "ctr"), peer)
	moveTo(t, filepath.Join(base, "ctr/sub"), sub)
	moveTo(t, filepath.Join(base, "ctr-sibling"), sibling)
	moveTo(t, base, parent)
	scope, err := ScopeOf(init)
	if err != nil {
		t.Fatal(err)
	}
	defer scope.Close()
	if scope.Kind != ByCgroup {
		t.Fatalf("scope kind %s, want %s", scope.Kind, ByCgroup)
	}
	for pid, want := range map[int]bool{sub: true, peer: true, sibling: false, parent: false, os.Getpid(): false, 1: false, init: false} {
		if got := scope.Contains(pid); got != want {
			t.Errorf("Contains(%d) = %v, want %v", pid, got, want)
		}
	}
}

// A scope whose init's cgroups are each the root or an ancestor of the caller's (so would hold
// the caller, and the host) is refused, although its cgroups differ from the caller's.
func TestCgroupScopeRefusesAncestorOfHost(t *testing.T) {
	root, _ := cgroupRoot(t)
	base := testCgroups(t, root, "self")
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	origin := ""
	for _, e := range parseCgroups(own) {
		if strings.HasPrefix(root, "/sys/fs/cgroup/pids") && strings.HasSuffix(e.hierarchy, ":pids") || root == "/sys/fs/cgroup" && e.hierarchy == "0:" {
			origin = filepath.Join(root, e.path)
		}
	}
	moveTo(t, filepath.Join(base, "self"), os.Getpid())
	t.Cleanup(func() { moveTo(t, origin, os.Getpid()) })
	for name, dir := range map[string]string{"root": root, "ancestor-of-caller": base} {
		init := sleeper(t)
		moveTo(t, dir, init)
		if s, err := ScopeOf(init); err == nil {
			s.Close()
			t.Errorf("%s: ScopeOf(%d) = %s scope, want refused", name, init, s.Kind)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// distinguishing drops the root, ancestors of host PID 1's and of the caller's cgroups.
func TestDistinguishingCgroups(t *testing.T) {
	host := parseCgroups([]byte("1:pids:/init.scope\n0::/init.scope\n"))
	own := parseCgroups([]byte("1:pids:/system.slice/containerd.service\n0::/system.slice/containerd.service\n"))
	for data, want := range map[string]int{
		"1:pids:/\n0::/\n":                                  0,
		"1:pids:/system.slice\n0::/init.scope\n":            0,
		"1:pids:/system.slice/containerd.service/c\n0::/\n": 1,
		"1:pids:/kubepods/pod1/c\n0::/kubepods/pod1/c\n":    2,
		"1:pids:/../x\n0::/init.scope/x\n":                  1,
	} {
		if got := distinguishing(parseCgroups([]byte(data)), host, own); len(got) != want {
			t.Errorf("%q: kept %v, want %d entries", data, got, want)
		}
	}
}

// containerCgroupRoots returns the hierarchies runc puts a container in: the unified one alone
// when /sys/fs/cgroup is cgroup v2; else the v1 pids controller and, on a hybrid host, the
// unified hierarchy beside it (runc joins both there).
func containerCgroupRoots(t *testing.T) []string {
	t.Helper()
	root, _ := cgroupRoot(t)
	roots := []string{root}
	if root != "/sys/fs/cgroup" {
		if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil {
			roots = append(roots, "/sys/fs/cgroup/unified")
		}
	}
	return roots
}

// leaderExitedScript runs a thread that sleeps on, then exits the main thread alone (exit(2), not
// exit_group): the process lives on with its leader a zombie.
const leaderExitedScript = `
import ctypes, threading, time
threading.Thread(target=lambda: time.sleep(1000)).start()
print("started", flush=True)
ctypes.CDLL(None).syscall(60, 0)
`

// A process of the container whose main thread has exited while another thread runs on is still
// a member. cgroup v1 reports such a process in the root ("/") of every v1 hierarchy of
// /proc/PID/cgroup (the kernel shows an exiting task there), cgroup v2 keeps its cgroup: on a v1
// or hybrid host the scope missed it, so the drain never signalled it.
func TestCgroupScopeKeepsAProcessWhoseMainThreadExited(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed (make stack installs it): %v", err)
	}
	var ctrs []string
	for _, root := range containerCgroupRoots(t) {
		ctrs = append(ctrs, filepath.Join(testCgroups(t, root, "ctr"), "ctr"))
	}
	init := sleeper(t)
	cmd := exec.Command(python, "-c", leaderExitedScript)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testguard.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	leaderless := cmd.Process.Pid
	for _, ctr := range ctrs {
		moveTo(t, ctr, init)
		moveTo(t, ctr, leaderless)
	}
	buf := make([]byte, 8)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := ReadStatus(leaderless)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the main thread of %d did not exit (state %c)", leaderless, st.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cgroups, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", leaderless))
	scope, err := ScopeOf(init)
	if err != nil {
		t.Fatal(err)
	}
	defer scope.Close()
	if !scope.Contains(leaderless) {
		t.Fatalf("a process whose main thread exited is not a member; its /proc/PID/cgroup:\n%s", cgroups)
	}
	if scope.Contains(os.Getpid()) || scope.Contains(1) {
		t.Fatal("the caller or PID 1 is a member")
	}
}
