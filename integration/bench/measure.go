package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// order is the order in which the runtimes take turns: graceful, stock, graceful, stock, ...
var order = []string{stack.GracefulRuntime, stack.StockRuntime}

func short(runtime string) string {
	if runtime == stack.StockRuntime {
		return "stock"
	}
	return "graceful"
}

// samples are one measurement's values per runtime (graceful, stock).
type samples map[string][]float64

func (s samples) add(runtime string, v float64) { s[runtime] = append(s[runtime], v) }
func (s samples) g() stats                      { return summarise(s[stack.GracefulRuntime]) }
func (s samples) s() stats                      { return summarise(s[stack.StockRuntime]) }

// stopPoint is the stop latency at one N (and, in the host-size sweep, one number of idle host
// processes).
type stopPoint struct {
	n int
	// sweep: a point of the host-size sweep, with hosts idle processes started on the host.
	sweep bool
	hosts int
	// emulated: the graceful shims behaved as this older kernel release (kernelemu builds).
	emulated string
	latency  samples   // ns
	drain    []float64 // graceful: the drain's duration, from the report (ns)
	// graceful: from the Kill call to the drain's start (State, tracer start and attach, init's
	// own exit), and from the drain's end to the exit event at the client (release, the kernel's
	// zap of what is left, reaping, the exit event), both in ns.
	beforeDrain, afterDrain []float64
	// cpu is the shim's CPU time (schedstat, summed over its threads) from before the Kill until
	// the exit event, in ns; tracer is graceful's tracer start (from the report), in ns.
	cpu      samples
	tracer   []float64
	termed   []int // graceful: processes that exited after SIGTERM, per repetition
	outcomes []map[string]int
	orders   map[string]int
	pidsMax  map[string]string // per runtime: the smallest pids.max from the container's cgroup up
}

// scanResult is the outcome of BenchmarkMembers.
type scanResult struct {
	command    string
	raw        string // the result line
	iterations int
	mean       float64 // ns/op (Members only)
	st         stats   // of single Members() calls, in ns
	full       stats   // of single AllMembers() calls (the full pass), in ns
	list       stats   // of single cgroup lists (what a drain with a signaller follows), in ns
}

// bench is one benchmark run and its results.
type bench struct {
	cfg     *config
	machine machine
	stack   *stack.Stack
	reports *reports
	seq     int
	mu      sync.Mutex

	startRun, startReady samples // ns
	rssOne, rssMany      samples // bytes
	// Private_Dirty of writable mappings (what each extra shim really costs; see initMemory) and
	// Pss, from smaps, in bytes: of the one shim, and summed over the many.
	dirtyOne, dirtyMany, pssMany samples
	manyShims                    map[string][]int
	stops                        []*stopPoint
	emulatedStopPoint            *stopPoint // the stop at cfg.emulateN as on cfg.emulate
	hostPoints                   []*hostPoint
	scan                         scanResult
	emulatedScan                 scanResult // as on cfg.emulate
	graceOvershoot               []float64  // ns: drain end − grace, from the report
	graceKilledAt                []float64  // ns: the TERM-ignoring process's end − grace, from the report
	graceStop                    []float64  // ns: client-side stop latency − grace
	graceReport                  string
	idleSwitches                 samples
	idleTicks                    samples // ms of utime+stime
	idleCPU                      samples // ns from schedstat
	idleThreads                  samples
	idleActive                   samples // seconds of the window in which the shim was switched in at all
	init                         *initResults

	failures []string
	elapsed  time.Duration
}

func (b *bench) failf(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = append(b.failures, fmt.Sprintf(format, args...))
}

func (b *bench) nextID(kind, runtime string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	return fmt.Sprintf("bench-%s-%s-%d", kind, short(runtime), b.seq)
}

// deleteContainer removes a container, recording a failure if it cannot.
func (b *bench) deleteContainer(c *stack.Container) {
	if err := c.Delete(); err != nil {
		b.failf("delete %s: %v", c.ID, err)
	}
}

// 1 (and 2, one container). Start latency: from NewContainer until Task.Start returns, and until
// the container's process printed "ready"; then, once settled, the RSS of its shim.
func (b *bench) startLatency(ctx context.Context) error {
	b.startRun, b.startReady, b.rssOne, b.dirtyOne = samples{}, samples{}, samples{}, samples{}
	// A start of each runtime first, not measured: the first start of a shim binary pays for
	// cold caches.
	for _, rt := range order {
		c, err := b.stack.Run(ctx, stack.Spec{ID: b.nextID("warmup", rt), Runtime: rt, Args: []string{"sleep", "100000"}})
		if err != nil {
			return err
		}
		b.deleteContainer(c)
	}
	for i := 0; i < b.cfg.startSamples; i++ {
		for _, rt := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			t0 := time.Now()
			c, err := b.stack.Run(ctx, stack.Spec{ID: b.nextID("start", rt), Runtime: rt, Args: []string{"sh", "-c", "echo ready; exec sleep 100000"}})
			if err != nil {
				return err
			}
			started := time.Since(t0)
			err = c.Output.WaitLine("ready", 30*time.Second)
			ready := time.Since(t0)
			if err == nil {
				time.Sleep(500 * time.Millisecond) // let the shim settle after the start
				var shim int
				if shim, err = shimOf(int(c.Task.Pid())); err == nil {
					var rss int64
					if rss, err = vmRSS(shim); err == nil {
						b.rssOne.add(rt, float64(rss))
					}
					var m initMemory
					if err == nil {
						if m, err = readSmapsRollup(shim); err == nil {
							b.dirtyOne.add(rt, float64(m.writableDirty))
						}
					}
				}
			}
			b.deleteContainer(c)
			if err != nil {
				return fmt.Errorf("%s: %w", c.ID, err)
			}
			b.startRun.add(rt, float64(started))
			b.startReady.add(rt, float64(ready))
		}
		logf("start %d/%d: graceful %v, stock %v", i+1, b.cfg.startSamples,
			time.Duration(last(b.startRun[stack.GracefulRuntime])).Round(time.Millisecond),
			time.Duration(last(b.startRun[stack.StockRuntime])).Round(time.Millisecond))
	}
	return nil
}

func last(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1]
}

// 2. Shim RSS summed over many idle containers, one shim each.
func (b *bench) manyRSS(ctx context.Context) error {
	b.rssMany, b.dirtyMany, b.pssMany, b.manyShims = samples{}, samples{}, samples{}, map[string][]int{}
	const workers = 4
	for rep := 0; rep < b.cfg.reps; rep++ {
		for _, rt := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			cs := make([]*stack.Container, b.cfg.manyN)
			errs := make([]error, b.cfg.manyN)
			parallel(b.cfg.manyN, workers, func(i int) {
				cs[i], errs[i] = b.stack.Run(ctx, stack.Spec{ID: b.nextID("rss", rt), Runtime: rt, Args: []string{"sleep", "100000"}})
			})
			err := errors.Join(errs...)
			var total, dirty, pss int64
			shims := map[int]bool{}
			if err == nil {
				time.Sleep(time.Second) // let the shims settle after the start
				for _, c := range cs {
					shim, serr := shimOf(int(c.Task.Pid()))
					if serr != nil {
						err = serr
						break
					}
					if !shims[shim] {
						shims[shim] = true
						rss, rerr := vmRSS(shim)
						if rerr != nil {
							err = rerr
							break
						}
						m, merr := readSmapsRollup(shim)
						if merr != nil {
							err = merr
							break
						}
						total, dirty, pss = total+rss, dirty+m.writableDirty, pss+m.pss
					}
				}
			}
			parallel(len(cs), workers, func(i int) {
				if cs[i] != nil {
					b.deleteContainer(cs[i])
				}
			})
			if err != nil {
				return fmt.Errorf("%s, %d containers: %w", short(rt), b.cfg.manyN, err)
			}
			if len(shims) != b.cfg.manyN {
				b.failf("rss: %s: %d containers were served by %d shims, want one shim per container", short(rt), b.cfg.manyN, len(shims))
			}
			b.manyShims[rt] = append(b.manyShims[rt], len(shims))
			b.rssMany.add(rt, float64(total))
			b.dirtyMany.add(rt, float64(dirty))
			b.pssMany.add(rt, float64(pss))
			logf("rss %d/%d: %s, %d containers, %d shims: RSS %.1f MiB, Private_Dirty %.1f MiB, Pss %.1f MiB", rep+1, b.cfg.reps, short(rt), b.cfg.manyN, len(shims),
				float64(total)/(1<<20), float64(dirty)/(1<<20), float64(pss)/(1<<20))
		}
	}
	return nil
}

// parallel calls f(0..n-1) on up to workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

// stopScript is an init that exits on TERM, with n sleeps that die on TERM (the default
// disposition), waiting in the wait builtin, which a trapped signal interrupts at once. Two
// spawners share the work of starting the sleeps (process creation is slow on small machines);
// each ends by becoming a sleep itself, so the container holds exactly n processes besides init.
func stopScript(n int) string {
	spawn := func(k int) string {
		return fmt.Sprintf("(for i in $(seq %d); do sleep 1000 & done; exec sleep 1000) &\n", k-1)
	}
	script := "trap \"exit 0\" TERM\n"
	if n == 1 {
		script += "sleep 1000 &\n"
	} else {
		script += spawn(n/2) + spawn(n-n/2)
	}
	return script + "echo ready\nwait"
}

// 3. Stop latency with N extra processes that exit on TERM.
func (b *bench) stopLatency(ctx context.Context) error {
	b.stops = nil
	for _, n := range b.cfg.stopNs {
		p := newStopPoint(n)
		b.stops = append(b.stops, p)
		if err := b.stopReps(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func newStopPoint(n int) *stopPoint {
	return &stopPoint{n: n, latency: samples{}, cpu: samples{}, orders: map[string]int{}, pidsMax: map[string]string{}}
}

// stopReps stops b.cfg.stopReps containers of each runtime at point p, graceful and stock taking
// turns.
func (b *bench) stopReps(ctx context.Context, p *stopPoint) error {
	for rep := 0; rep < b.cfg.stopReps; rep++ {
		for _, rt := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := b.stopOnce(ctx, p, rt); err != nil {
				return fmt.Errorf("%s, %s: %w", p.name(), short(rt), err)
			}
		}
		logf("%s %d/%d: graceful %v (%d/%d TERMed), stock %v", p.name(), rep+1, b.cfg.stopReps,
			time.Duration(last(p.latency[stack.GracefulRuntime])).Round(time.Millisecond), p.termed[len(p.termed)-1], p.n,
			time.Duration(last(p.latency[stack.StockRuntime])).Round(time.Millisecond))
	}
	return nil
}

// emulatedStop measures the stop at cfg.emulateN in the current stack, whose graceful shims behave
// as the release emulate, and checks in containerd's log that they said so.
func (b *bench) emulatedStop(ctx context.Context, emulate string) error {
	p := newStopPoint(b.cfg.emulateN)
	p.emulated = emulate
	b.emulatedStopPoint = p
	if err := b.stopReps(ctx, p); err != nil {
		return err
	}
	if want := "behaving as Linux " + emulate; !strings.Contains(b.stack.Log(), want) {
		return fmt.Errorf("containerd's log has no %q: the graceful shims did not behave as Linux %s", want, emulate)
	}
	return nil
}

// name names the point in failures: "stop N=100", "stop N=1000 as on Linux 6.1", or "hostsize
// 5000 (N=10)".
func (p *stopPoint) name() string {
	if p.sweep {
		return fmt.Sprintf("hostsize %d (N=%d)", p.hosts, p.n)
	}
	if p.emulated != "" {
		return fmt.Sprintf("stop N=%d as on Linux %s", p.n, p.emulated)
	}
	return fmt.Sprintf("stop N=%d", p.n)
}

// stopOnce runs one container of stopScript(p.n) under runtime rt and stops it, adding to p the
// stop latency, the shim's CPU time and, for graceful, what its stop report says.
func (b *bench) stopOnce(ctx context.Context, p *stopPoint, rt string) error {
	kind := fmt.Sprintf("stop%d", p.n)
	if p.sweep {
		kind = fmt.Sprintf("hostsize%d", p.hosts)
	}
	spec := stack.Spec{ID: b.nextID(kind, rt), Runtime: rt, Script: stopScript(p.n)}
	if rt == stack.GracefulRuntime && b.cfg.stopOrder != "" {
		spec.Annotations = map[string]string{"io.containerd.graceful.v2.stop-order": b.cfg.stopOrder}
	}
	c, err := b.stack.Run(ctx, spec)
	if err != nil {
		return err
	}
	defer b.deleteContainer(c)
	timeout := 60*time.Second + time.Duration(p.n)*30*time.Millisecond
	if err := c.Output.WaitLine("ready", timeout); err != nil {
		return err
	}
	init := int(c.Task.Pid())
	limit, cgroup, err := pidsLimit(init)
	if err != nil {
		return err
	}
	p.pidsMax[rt] = fmt.Sprintf("%s (`%s` and its parents)", limit, cgroup)
	if v, err := strconv.Atoi(limit); err == nil && v < p.n+2 {
		b.failf("%s: the container's pids limit %d (%s) caps N", p.name(), v, cgroup)
	}
	ns, err := pidNamespace(init)
	if err != nil {
		return err
	}
	// Every sleep was forked before "ready"; wait until the kernel shows all of them.
	deadline := time.Now().Add(timeout)
	for {
		got := countInNamespace(ns) - 1 // init
		if got == p.n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the container holds %d processes besides init, want %d", got, p.n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the last ones finish exec'ing
	shim, err := shimOf(init)
	if err != nil {
		return err
	}
	before, err := readUsage(shim)
	if err != nil {
		return err
	}
	kill := time.Now()
	took, _, err := c.Stop(ctx, syscall.SIGTERM, 2*time.Minute)
	if err != nil {
		return err
	}
	after, err := readUsage(shim)
	if err != nil {
		return fmt.Errorf("shim %d after the stop: %w", shim, err)
	}
	p.latency.add(rt, float64(took))
	p.cpu.add(rt, float64(after.cpuNs-before.cpuNs))
	if rt != stack.GracefulRuntime {
		return nil
	}
	rep, err := b.reports.wait(c.ID, 30*time.Second)
	if err != nil {
		return err
	}
	nTermed, outcomes := termed(rep)
	p.termed = append(p.termed, nTermed)
	p.outcomes = append(p.outcomes, outcomes)
	p.orders[rep.Order]++
	if rep.TracerStart > 0 {
		p.tracer = append(p.tracer, rep.TracerStart)
	}
	if rep.Drain != nil {
		p.drain = append(p.drain, rep.Drain.Duration)
		before := rep.Drain.Started.Sub(kill)
		p.beforeDrain = append(p.beforeDrain, float64(before))
		p.afterDrain = append(p.afterDrain, float64(took-before)-rep.Drain.Duration)
	}
	if nTermed != p.n {
		var drainNotes []string
		atOnce := 0
		if rep.Drain != nil {
			drainNotes, atOnce = rep.Drain.Notes, rep.Drain.AtOnce
		}
		b.failf("%s: graceful TERMed %d of %d processes (outcomes %v, notes %q; drain: %d signalled at once, notes %q)", p.name(), nTermed, p.n, outcomes, rep.Notes, atOnce, drainNotes)
	}
	return nil
}

// graceScript: a child that ignores TERM, and an init that exits at once on TERM.
const graceScript = `sh -c 'trap "" TERM; echo trapped; while :; do sleep 0.05; done' &
trap "exit 0" TERM
echo ready
while :; do sleep 0.01; done`

// graceAccuracy is the grace period of the grace accuracy runs.
const graceAccuracy = time.Second

// 5. Grace accuracy: the TERM-ignoring child is SIGKILLed when the grace period ends.
func (b *bench) graceAccuracy(ctx context.Context) error {
	b.graceOvershoot, b.graceKilledAt, b.graceStop = nil, nil, nil
	for i := 0; i < b.cfg.graceReps; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := b.stack.Run(ctx, stack.Spec{ID: b.nextID("grace", stack.GracefulRuntime), Runtime: stack.GracefulRuntime, Script: graceScript,
			Annotations: map[string]string{
				"io.containerd.graceful.v2.grace-period": graceAccuracy.String(),
				"io.containerd.graceful.v2.stop-order":   "children-first",
			}})
		if err != nil {
			return err
		}
		err = b.graceOnce(ctx, c)
		b.deleteContainer(c)
		if err != nil {
			return fmt.Errorf("%s: %w", c.ID, err)
		}
		logf("grace %d/%d: drain end − G = %v, stop − G = %v", i+1, b.cfg.graceReps,
			time.Duration(last(b.graceOvershoot)).Round(100*time.Microsecond), time.Duration(last(b.graceStop)).Round(100*time.Microsecond))
	}
	return nil
}

func (b *bench) graceOnce(ctx context.Context, c *stack.Container) error {
	for _, line := range []string{"ready", "trapped"} {
		if err := c.Output.WaitLine(line, 30*time.Second); err != nil {
			return err
		}
	}
	took, _, err := c.Stop(ctx, syscall.SIGTERM, 30*time.Second)
	if err != nil {
		return err
	}
	rep, err := b.reports.wait(c.ID, 30*time.Second)
	if err != nil {
		return err
	}
	if rep.Drain == nil {
		return fmt.Errorf("report without a drain: %+v", rep)
	}
	killed := 0.0
	for _, p := range rep.Drain.Processes {
		if p.Outcome == "killed" && p.After > killed {
			killed = p.After
		}
	}
	if !rep.Drain.GraceExpired || killed == 0 || rep.Order != "children-first" {
		b.failf("grace: %s: order %q, grace expired %v, no killed process %v: want children-first, the TERM-ignoring child killed at the grace's end",
			c.ID, rep.Order, rep.Drain.GraceExpired, killed == 0)
	}
	if rep.Drain.Grace != float64(graceAccuracy) {
		b.failf("grace: %s: report's grace %v, want %v", c.ID, time.Duration(rep.Drain.Grace), graceAccuracy)
	}
	b.graceOvershoot = append(b.graceOvershoot, rep.Drain.Duration-rep.Drain.Grace)
	b.graceKilledAt = append(b.graceKilledAt, killed-rep.Drain.Grace)
	b.graceStop = append(b.graceStop, float64(took-graceAccuracy))
	return nil
}

// 6. Idle cost: context switches and CPU time of the shim of an idle container (sleep as init, no
// shell loop), both runtimes over the same window.
func (b *bench) idleCost(ctx context.Context) error {
	b.idleSwitches, b.idleTicks, b.idleCPU, b.idleThreads, b.idleActive = samples{}, samples{}, samples{}, samples{}, samples{}
	for rep := 0; rep < b.cfg.reps; rep++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		shims := map[string]int{}
		var cs []*stack.Container
		cleanup := func() {
			for _, c := range cs {
				b.deleteContainer(c)
			}
		}
		for _, rt := range order {
			c, err := b.stack.Run(ctx, stack.Spec{ID: b.nextID("idle", rt), Runtime: rt, Args: []string{"sleep", "100000"}})
			if err != nil {
				cleanup()
				return err
			}
			cs = append(cs, c)
			if shims[rt], err = shimOf(int(c.Task.Pid())); err != nil {
				cleanup()
				return err
			}
		}
		time.Sleep(2 * time.Second) // past the start's own activity
		before := map[string]usage{}
		for rt, pid := range shims {
			u, err := readUsage(pid)
			if err != nil {
				cleanup()
				return err
			}
			before[rt] = u
		}
		// Sample every second, to count the seconds in which the shim ran at all.
		active := map[string]int{}
		prev := map[string]int64{}
		for rt := range shims {
			prev[rt] = before[rt].switches
		}
		end := time.Now().Add(b.cfg.idle)
		for time.Now().Before(end) {
			select {
			case <-time.After(min(time.Second, time.Until(end))):
			case <-ctx.Done():
				cleanup()
				return ctx.Err()
			}
			for rt, pid := range shims {
				if u, err := readUsage(pid); err == nil {
					if u.switches != prev[rt] {
						active[rt]++
					}
					prev[rt] = u.switches
				}
			}
		}
		for rt, pid := range shims {
			u, err := readUsage(pid)
			if err != nil {
				cleanup()
				return err
			}
			b.idleSwitches.add(rt, float64(u.switches-before[rt].switches))
			b.idleTicks.add(rt, float64(u.ticks-before[rt].ticks)*1000/clockTicks)
			b.idleCPU.add(rt, float64(u.cpuNs-before[rt].cpuNs))
			b.idleThreads.add(rt, float64(u.threads))
			b.idleActive.add(rt, float64(active[rt]))
		}
		cleanup()
		logf("idle %d/%d over %v: context switches graceful %v (active in %v s), stock %v (active in %v s)", rep+1, b.cfg.reps, b.cfg.idle,
			last(b.idleSwitches[stack.GracefulRuntime]), last(b.idleActive[stack.GracefulRuntime]),
			last(b.idleSwitches[stack.StockRuntime]), last(b.idleActive[stack.StockRuntime]))
	}
	return nil
}

var (
	benchLine   = regexp.MustCompile(`^BenchmarkMembers\S*\s+(\d+)\s+([0-9.]+) ns/op`)
	benchMetric = regexp.MustCompile(`([0-9.]+) ((?:fullpass-|list-)?(?:median|min|max))-ns`)
)

// 4. The membership: process.BenchmarkMembers through go test. The benchmark sets up its
// namespaces once and reports the median, minimum and maximum of its single Members() calls (the
// container's own lists) and of its single AllMembers() calls (the full pass over /proc).
func (b *bench) runScan(ctx context.Context) error {
	b.scan, b.emulatedScan = scanResult{}, scanResult{}
	if err := b.scanOnce(ctx, &b.scan, ""); err != nil {
		return err
	}
	if b.cfg.emulate == "" {
		return nil
	}
	return b.scanOnce(ctx, &b.emulatedScan, b.cfg.emulate)
}

// scanOnce runs BenchmarkMembers into result: natively, or as on the release emulate (a kernelemu
// build of the benchmark).
func (b *bench) scanOnce(ctx context.Context, result *scanResult, emulate string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkMembers$", "-benchtime", b.cfg.scanBench,
		"-count", "1", "-timeout", "20m"}
	env := []string{fmt.Sprintf("GRACEFUL_BENCH_SCAN_N=%d", b.cfg.scanN)}
	if emulate != "" {
		args = append(args, "-tags", "kernelemu")
		env = append(env, stack.EmulateKernelEnv+"="+emulate)
	}
	args = append(args, "./process/")
	result.command = strings.Join(env, " ") + " go " + strings.Join(args, " ")
	logf("scan: %s", result.command)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = stack.ModuleRoot()
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	var output []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		output = append(output, line)
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		result.raw = line
		result.iterations, _ = strconv.Atoi(m[1])
		result.mean, _ = strconv.ParseFloat(m[2], 64)
		// The metrics by prefix: "" Members(), "fullpass-" AllMembers(), "list-" the cgroup list.
		byPrefix := map[string]*stats{"": &result.st, "fullpass-": &result.full, "list-": &result.list}
		for _, mm := range benchMetric.FindAllStringSubmatch(line, -1) {
			v, _ := strconv.ParseFloat(mm[1], 64)
			name := mm[2]
			prefix := name[:strings.LastIndex(name, "-")+1]
			st := byPrefix[prefix]
			switch strings.TrimPrefix(name, prefix) {
			case "median":
				st.median = v
			case "min":
				st.min = v
			case "max":
				st.max = v
			}
		}
		for _, st := range byPrefix {
			st.n = result.iterations
		}
		logf("scan: %s", line)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("go test: %w\n%s", err, strings.Join(output, "\n"))
	}
	if result.raw == "" || result.st.median == 0 || result.full.median == 0 || result.list.median == 0 {
		return fmt.Errorf("no BenchmarkMembers result with median-ns, fullpass-median-ns and list-median-ns in the output:\n%s", strings.Join(output, "\n"))
	}
	return nil
}
