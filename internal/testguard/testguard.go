// Package testguard keeps what a test binary starts from outliving it. Main runs the tests in a
// cgroup of their own, and first removes what an earlier run that was killed (a timeout panic, an
// interrupt, a SIGKILL) left: every process in the cgroups such a run created, thawed first if it
// was frozen. It reads comm and cgroup files only, never a command line, which can block for good.
package testguard

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/internal/procfs"
)

// roots are the cgroup hierarchies the tests create cgroups in: cgroup v1's pids and freezer, the
// hybrid host's unified one, and /sys/fs/cgroup itself when it is cgroup v2 (make test-cgroup2).
var roots = []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"}

// owned matches the cgroups a test binary creates, named after its PID: its guard, the process
// tests' graceful-test-PID and graceful-bench-PID-N.
var owned = regexp.MustCompile(`^graceful-(guard|test|bench)-([0-9]+)(-[0-9]+)?$`)

// guardPrefix names a test binary's own cgroup.
const guardPrefix = "graceful-guard-"

// Main runs the tests of m (as TestMain would) in a cgroup of their own, after removing what
// earlier, interrupted runs left, and kills whatever the tests left in it when they end. It
// returns m.Run's exit code. Without a cgroup hierarchy to use it runs the tests all the same.
func Main(m *testing.M) int { return Run(m.Run) }

// Run is Main for a TestMain that does more around m.Run: run is what it does.
//
// A binary outside the initial PID namespace (a test that runs its own binary under unshare
// --pid) neither sweeps nor gets a cgroup: the cgroups are named after PIDs of the initial
// namespace, which it cannot see, so it would take a running binary's for a dead one's. It
// runs in the cgroup of the binary that started it.
func Run(run func() int) int {
	if !inInitialPIDNamespace() {
		return run()
	}
	for _, r := range Sweep() {
		fmt.Fprintln(os.Stderr, "testguard:", r)
	}
	dir, err := enter()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testguard: running without a cgroup of its own:", err)
		return run()
	}
	code := run()
	if left := leave(dir); left > 0 {
		fmt.Fprintf(os.Stderr, "testguard: killed %d processes the tests left behind\n", left)
	}
	return code
}

// Sweep removes the cgroups that test binaries no longer running created, killing every process
// in them, and says what it removed.
func Sweep() []string {
	var done []string
	for _, root := range roots {
		entries, err := os.ReadDir(root)
		if err != nil || !isCgroup(root) {
			continue
		}
		for _, e := range entries {
			m := owned.FindStringSubmatch(e.Name())
			if !e.IsDir() || m == nil {
				continue
			}
			owner, _ := strconv.Atoi(m[2])
			if testBinaryAlive(owner) {
				continue
			}
			dir := filepath.Join(root, e.Name())
			n := killAll(dir)
			if removeTree(dir) {
				done = append(done, fmt.Sprintf("removed %s, left by a run that ended (%d processes killed)", dir, n))
			} else {
				done = append(done, fmt.Sprintf("could not remove %s, left by a run that ended (%d processes killed)", dir, n))
			}
		}
	}
	return done
}

// enter creates this binary's guard cgroup and moves the binary into it, so that everything it
// starts from now on is in it too (unless a test moves a process elsewhere: those cgroups are
// named after the binary and swept as well).
func enter() (string, error) {
	for _, root := range roots {
		if !isCgroup(root) || (root == "/sys/fs/cgroup" && !isV2(root)) {
			continue
		}
		if root == "/sys/fs/cgroup/unified" || root == "/sys/fs/cgroup/freezer" {
			continue // pids (v1) or the v2 root: one hierarchy is enough
		}
		dir := filepath.Join(root, guardPrefix+strconv.Itoa(os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0o644); err != nil {
			os.Remove(dir)
			return "", fmt.Errorf("join %s: %w", dir, err)
		}
		return dir, nil
	}
	return "", fmt.Errorf("no pids or cgroup v2 hierarchy")
}

// leave kills every other process of dir, moves this binary back to the parent cgroup and
// removes dir. It returns how many processes it killed.
func leave(dir string) int {
	n := killAll(dir)
	os.WriteFile(filepath.Join(filepath.Dir(dir), "cgroup.procs"), []byte("0"), 0o644)
	removeTree(dir)
	return n
}

// killAll thaws dir and the cgroups below it and SIGKILLs every process in them but this one,
// until none is left (a process may fork while it is killed) or 5 s have passed.
func killAll(dir string) int {
	killed := 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		pids := procsBelow(dir)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return killed
}

// procsBelow thaws dir and its descendants and lists their processes, this one excepted.
func procsBelow(dir string) []int {
	var pids []int
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		os.WriteFile(filepath.Join(path, "freezer.state"), []byte("THAWED"), 0o644)
		os.WriteFile(filepath.Join(path, "cgroup.freeze"), []byte("0"), 0o644)
		data, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		for _, f := range strings.Fields(string(data)) {
			// A process this binary's PID namespace cannot see is listed as 0 (cgroup v2):
			// kill(0) would be this binary's process group.
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeTree removes dir and the cgroups below it, deepest first, retrying while their
// processes finish dying.
func removeTree(dir string) bool {
	var dirs []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		for j := 0; j < 100; j++ {
			if err := os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_, err := os.Stat(dir)
	return os.IsNotExist(err)
}

// testBinaryAlive reports whether pid is a running Go test binary (its comm ends in ".test"), so
// that the cgroups of a run in progress (another package's, at the same time) are left alone.
func testBinaryAlive(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return false
	}
	// A killed binary that nobody has reaped yet is a zombie: dead.
	if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
			return false
		}
	}
	name := strings.TrimSpace(string(comm))
	// comm keeps 15 characters ("integration.tes" for integration.test): a name cut there may be
	// a test binary's, and is left alone.
	return strings.HasSuffix(name, ".test") || len(name) == 15
}

// initialPIDNamespace is the inode of the initial PID namespace's file (PROC_PID_INIT_INO, fixed
// since Linux 3.8).
const initialPIDNamespace = "pid:[4026531836]"

// inInitialPIDNamespace reports whether this binary runs in the initial PID namespace, where the
// owners' PIDs in cgroup names mean what they say.
func inInitialPIDNamespace() bool {
	ns, err := os.Readlink("/proc/self/ns/pid")
	return err == nil && ns == initialPIDNamespace
}

func isCgroup(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.procs"))
	return err == nil
}

func isV2(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.controllers"))
	return err == nil
}

// StackNamespace is the containerd namespace, and so the cgroup parent, of the integration
// stack's containers (integration/stack.Namespace).
const StackNamespace = "graceful-test"

// SweepStacks removes what killed runs of the integration tests left of their private stacks:
// processes whose executable lies under a stack's directory (/run/graceful-*: containerd, shims,
// tracers, the containers' processes), the containers' cgroups (StackNamespace/*), and the
// stacks' mounts. It does nothing while another integration test binary runs, whose stack that
// could be; self, the caller's own binary, is never counted.
func SweepStacks() []string {
	if otherIntegrationRunning() {
		return nil
	}
	var done []string
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, exe := range procs {
		pid, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(exe, "/proc/"), "/exe"))
		if pid == os.Getpid() || pid == 0 {
			continue
		}
		target, err := os.Readlink(exe)
		if err != nil || !strings.HasPrefix(target, "/run/graceful-") {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			done = append(done, fmt.Sprintf("killed %d (%s), left by a stack that ended", pid, target))
		}
	}
	// The containers' cgroups, in every hierarchy: the stack's namespace's, and the CRI tests'
	// parents (graceful-cri-*, named after their stacks' directories).
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	hierarchies = append(hierarchies, "/sys/fs/cgroup")
	for _, root := range hierarchies {
		if !isCgroup(root) {
			continue
		}
		dirs, _ := filepath.Glob(filepath.Join(root, "graceful-cri-*"))
		if d := filepath.Join(root, StackNamespace); isCgroup(d) {
			entries, _ := os.ReadDir(d)
			for _, e := range entries {
				if e.IsDir() {
					dirs = append(dirs, filepath.Join(d, e.Name()))
				}
			}
		}
		for _, dir := range dirs {
			if n := killAll(dir); n > 0 {
				done = append(done, fmt.Sprintf("killed %d processes in %s, left by a stack that ended", n, dir))
			}
			removeTree(dir)
		}
	}
	if data, err := os.ReadFile("/proc/self/mounts"); err == nil {
		lines := strings.Split(string(data), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			f := strings.Fields(lines[i])
			// The fleet test's bind of the host's / too (integration/fleet_test.go).
			if len(f) > 1 && (strings.HasPrefix(f[1], "/run/graceful-") || strings.HasPrefix(f[1], filepath.Join(os.TempDir(), "graceful-fleet-"))) {
				if syscall.Unmount(f[1], syscall.MNT_DETACH) == nil {
					done = append(done, "unmounted "+f[1]+", left by a stack that ended")
				}
			}
		}
	}
	return append(done, sweepRuncState(runcRoot)...)
}

// runcRoot is runc's default root, where the shims keep each container's state by namespace.
const runcRoot = "/run/containerd/runc"

// sweepRuncState removes the runc state that a killed run left in the test namespaces
// (graceful-*) of root: a container whose init is gone. The tests' container IDs repeat from run
// to run, and runc refuses to create a container whose state exists ("container with given ID
// already exists").
func sweepRuncState(root string) []string {
	var done []string
	states, _ := filepath.Glob(filepath.Join(root, "graceful-*", "*", "state.json"))
	for _, state := range states {
		data, err := os.ReadFile(state)
		if err != nil {
			continue
		}
		var st struct {
			Pid   int    `json:"init_process_pid"`
			Start uint64 `json:"init_process_start"`
		}
		if json.Unmarshal(data, &st) != nil || st.Pid <= 0 || processStartedAt(st.Pid, st.Start) {
			continue
		}
		dir := filepath.Dir(state)
		if os.RemoveAll(dir) == nil {
			done = append(done, "removed runc state "+dir+", left by a stack that ended")
		}
	}
	return done
}

// processStartedAt reports whether process pid exists and started at start (clock ticks after
// boot, field 22 of /proc/PID/stat): the same process, not a later one with its PID.
func processStartedAt(pid int, start uint64) bool {
	fields, ok := procfs.StatFields(fmt.Sprintf("/proc/%d/stat", pid))
	if !ok || len(fields) < 20 {
		return false
	}
	got, err := strconv.ParseUint(fields[19], 10, 64)
	return err == nil && got == start
}

// otherIntegrationRunning reports whether an integration test binary other than this process
// runs (comm "integration.tes", kept to 15 characters).
func otherIntegrationRunning() bool {
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		pid, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(c, "/proc/"), "/comm"))
		if pid == os.Getpid() {
			continue
		}
		if data, err := os.ReadFile(c); err == nil && strings.HasPrefix(strings.TrimSpace(string(data)), "integration.te") {
			return true
		}
	}
	return false
}

// spawns runs the functions sent to it on one OS thread that lives as long as the test binary.
var spawns = make(chan func())

func init() {
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is never ended
		for f := range spawns {
			f()
		}
	}()
}

// Start starts cmd so that it dies with the test binary: SIGKILL as its parent-death signal, from
// a thread that never ends (the kernel sends the signal when the thread that forked the child
// ends, and Go ends a thread whose goroutine exits locked to it). Give a command that starts
// others a way to take them along: unshare --kill-child, or a PID namespace of its own.
func Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	spawns <- func() { errc <- cmd.Start() }
	return <-errc
}
