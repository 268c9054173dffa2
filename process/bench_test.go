package process

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/internal/procfs"
)

// benchScanN is how many processes each namespace of BenchmarkMembers holds: GRACEFUL_BENCH_SCAN_N,
// default 5000 (a smoke run uses 100).
func benchScanN(b *testing.B) int {
	n := 5000
	if v := os.Getenv("GRACEFUL_BENCH_SCAN_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("GRACEFUL_BENCH_SCAN_N=%q: want a positive integer", v)
		}
	}
	return n
}

// blockers is a namespace script that starts n processes blocked in opening fifo (a FIFO nobody
// writes to) and prints "ready". They are shells forked without an exec, which on small machines
// are several times quicker to create than `sleep 1000 &` (process creation is the slow part of
// the setup), and they die on any signal like a sleep. Two spawners share the work; each ends
// blocked itself, so the namespace holds exactly n processes besides its PID 1.
func blockers(n int, fifo string) string {
	if n == 1 {
		return fmt.Sprintf("read x < %q & echo ready; wait", fifo)
	}
	spawner := func(k int) string {
		return fmt.Sprintf("(for i in $(seq %d); do read x < %q & done; read x < %q) &\n", k-1, fifo, fifo)
	}
	return spawner(n/2) + spawner(n-n/2) + "echo ready; wait"
}

// benchFIFO makes a FIFO in a temporary directory for blockers.
func benchFIFO(b *testing.B) string {
	fifo := filepath.Join(b.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		b.Fatal(err)
	}
	return fifo
}

// BenchmarkMembers measures the membership of a container whose PID namespace holds N blocked
// processes and is in a cgroup of its own, as a container's is, on a host where a sibling PID
// namespace (another container, say) holds N more:
//
//   - Scope.Members, what a drain signals first: the candidates from the container itself (its
//     cgroup.procs, init's and the caller's children), each confirmed; its cost grows with the
//     container, not with the host. Reported as ns/op and median-ns, min-ns, max-ns.
//   - Scope.AllMembers, the one full pass over /proc that a drain runs aside (off its critical
//     path): every process of the host is looked at, and the sibling's are the expensive ones
//     (their namespace is neither the container's nor the caller's, so its parents are walked).
//     Timed once per iteration, outside ns/op: fullpass-median-ns, fullpass-min-ns, fullpass-max-ns.
//   - the cgroup list (Scope.cgroupList), what a drain with a signaller follows: the container's
//     cgroup.procs, read in one pass, unconfirmed (the kernel's kill(-1) from inside the namespace
//     is what reaches exactly the members). Timed outside ns/op: list-median-ns, list-min-ns,
//     list-max-ns.
//
// The namespaces are set up once (b.Loop). Both lists must hold exactly the N members.
func BenchmarkMembers(b *testing.B) {
	n := benchScanN(b)
	timeout := time.Minute + time.Duration(n)*20*time.Millisecond
	// The cgroup first: its cleanup (removing it) runs after the namespace's (killing it).
	dir := benchCgroup(b)
	// Both namespaces are populated at the same time.
	fifo := benchFIFO(b)
	member := launchBenchNamespaceIn(b, dir, blockers(n, fifo))
	other := launchBenchNamespace(b, blockers(n, fifo))
	member.await(b, n, timeout)
	other.await(b, n, timeout)
	scope, err := ScopeOf(member.init)
	if err != nil {
		b.Fatal(err)
	}
	defer scope.Close()
	if scope.Kind != ByPIDNamespace || other.ns == member.ns {
		b.Fatalf("scope kind %s, namespaces %d and %d: want %s, two namespaces", scope.Kind, member.ns, other.ns, ByPIDNamespace)
	}
	if _, ok := scope.candidates(); !ok {
		b.Fatalf("the scope lists no candidates from cgroup %s (its cgroup directory is %q): Members() would take the full pass", dir, scope.cgroupDir)
	}
	var members, all, listed []int
	var took, full, list []time.Duration
	for b.Loop() {
		start := time.Now()
		members, err = scope.Members()
		took = append(took, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		start = time.Now()
		listed = listedMembers(b, scope)
		list = append(list, time.Since(start))
		start = time.Now()
		all, err = scope.AllMembers()
		full = append(full, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	if len(members) != n {
		b.Fatalf("Members() found %d processes, want %d", len(members), n)
	}
	if len(all) != n {
		b.Fatalf("AllMembers() found %d processes, want %d", len(all), n)
	}
	// The cgroup list holds the members, and unshare (which joined the cgroup before it made the
	// namespace): a drain drops it when it examines it, and kill(-1) never reaches it.
	extra := map[int]bool{member.cmd.Process.Pid: true}
	inList := map[int]bool{}
	for _, pid := range listed {
		inList[pid] = true
	}
	for _, pid := range members {
		if !inList[pid] {
			b.Fatalf("member %d is not in the cgroup list", pid)
		}
		delete(inList, pid)
	}
	for pid := range inList {
		if !extra[pid] {
			b.Fatalf("the cgroup list holds %d, which is no member", pid)
		}
	}
	// After the loop: b.Loop's first call resets reported metrics.
	report := func(prefix string, d []time.Duration) {
		slices.Sort(d)
		median := d[len(d)/2]
		if len(d)%2 == 0 {
			median = (d[len(d)/2-1] + d[len(d)/2]) / 2
		}
		b.ReportMetric(float64(median.Nanoseconds()), prefix+"median-ns")
		b.ReportMetric(float64(d[0].Nanoseconds()), prefix+"min-ns")
		b.ReportMetric(float64(d[len(d)-1].Nanoseconds()), prefix+"max-ns")
	}
	report("", took)
	report("fullpass-", full)
	report("list-", list)
	b.ReportMetric(float64(n), "members")
	b.ReportMetric(float64(n), "others")
}

// listedMembers is what a drain at once lists (Scope.cgroupList), without init and without repeats, as
// its prepareList keeps them.
func listedMembers(b *testing.B, scope *Scope) []int {
	pids, ok := scope.cgroupList()
	if !ok {
		b.Fatal("no cgroup to list")
	}
	seen := make(map[int]bool, len(pids))
	out := pids[:0]
	for _, pid := range pids {
		if pid != scope.Init && !seen[pid] {
			seen[pid] = true
			out = append(out, pid)
		}
	}
	return out
}

// benchCgroups numbers the cgroups benchCgroup creates, so that one test may create several.
var benchCgroups atomic.Int64

// benchCgroup creates a cgroup for the benchmark's member namespace, removed at cleanup (after
// the processes of anything launched later, whose cleanups run first): under the unified
// hierarchy when /sys/fs/cgroup is cgroup v2, else under the v1 pids controller, as
// membership_cgroup_test.go's cgroupRoot picks (which takes a *testing.T).
func benchCgroup(tb testing.TB) string {
	tb.Helper()
	root := "/sys/fs/cgroup/pids"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		root = "/sys/fs/cgroup"
	} else if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		tb.Fatalf("no cgroup hierarchy for the benchmark's container: %v", err)
	}
	dir := filepath.Join(root, fmt.Sprintf("graceful-bench-%d-%d", os.Getpid(), benchCgroups.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		var err error
		for i := 0; i < 250; i++ {
			if err = os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		tb.Errorf("remove cgroup %s: %v", dir, err)
	})
	return dir
}

// benchNamespace is a PID namespace (launchNamespace) whose PID 1 runs a benchmark's script.
type benchNamespace struct {
	*pidNamespace
	ready chan error
	ns    uint64 // inode of the namespace
}

// launchBenchNamespace runs script as PID 1 of a new PID namespace. At cleanup the namespace is
// killed (launchNamespace) and the benchmark fails if any of its processes is still there after
// 30s.
func launchBenchNamespace(b *testing.B, script string) *benchNamespace {
	b.Helper()
	return launchBenchNamespaceIn(b, "", script)
}

// launchBenchNamespaceIn is launchBenchNamespace with the namespace in cgroup dir, as a
// container's is ("": the caller's cgroup).
func launchBenchNamespaceIn(b *testing.B, dir, script string) *benchNamespace {
	b.Helper()
	bn := &benchNamespace{ready: make(chan error, 1)}
	// Registered before the launch, so that it runs after the launcher's cleanup has killed the
	// namespace.
	b.Cleanup(func() { bn.awaitEmpty(b) })
	bn.pidNamespace = launchNamespace(b, dir, script)
	go func() {
		r := bufio.NewReader(bn.stdout)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				bn.ready <- fmt.Errorf("namespace script ended before \"ready\": %w", err)
				return
			}
			if strings.TrimSpace(line) == "ready" {
				bn.ready <- nil
				return
			}
		}
	}()
	return bn
}

// awaitEmpty fails the benchmark unless the killed namespace's processes are gone within 30s.
func (bn *benchNamespace) awaitEmpty(b *testing.B) {
	if bn.ns == 0 {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := countInNamespace(bn.ns)
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Errorf("%d processes of PID namespace %d still there 30s after it was killed", left, bn.ns)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// await waits for the namespace's "ready" line and until it holds want processes besides its
// PID 1.
func (bn *benchNamespace) await(b *testing.B, want int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	select {
	case err := <-bn.ready:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(timeout):
		b.Fatalf("no \"ready\" from the namespace after %v", timeout)
	}
	bn.findInit(b)
	ns, err := procfs.NSInode(fmt.Sprintf("/proc/%d/ns/pid", bn.init))
	if err != nil {
		b.Fatal(err)
	}
	bn.ns = ns
	for {
		got := countInNamespace(bn.ns) - 1 // its PID 1
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("namespace holds %d processes besides its PID 1, want %d", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countInNamespace counts the processes whose PID namespace has inode ns.
func countInNamespace(ns uint64) int {
	pids, err := allPIDs()
	if err != nil {
		return 0
	}
	n := 0
	for _, pid := range pids {
		if ino, err := procfs.NSInode("/proc/" + strconv.Itoa(pid) + "/ns/pid"); err == nil && ino == ns {
			n++
		}
	}
	return n
}

// The benchmark's namespaces and its cgroup leave nothing behind (checked on a small one).
func TestBenchNamespaceCleanup(t *testing.T) {
	var ns uint64
	var dir string
	testing.Benchmark(func(b *testing.B) {
		dir = benchCgroup(b)
		bn := launchBenchNamespaceIn(b, dir, blockers(20, benchFIFO(b)))
		bn.await(b, 20, 30*time.Second)
		ns = bn.ns
		for b.Loop() {
		}
	})
	if ns == 0 {
		t.Fatal("the benchmark did not start its namespace")
	}
	if left := countInNamespace(ns); left != 0 {
		t.Fatalf("%d processes left in the benchmark's namespace", left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the benchmark's cgroup %s is still there (%v)", dir, err)
	}
}
