// Command bench measures the graceful shim against containerd's stock runc shim, side by side in
// one private containerd (integration/stack), alternating graceful and stock run by run:
//
//  1. start latency: create + start until Task.Start returns (and until the container prints);
//  2. shim RSS with one idle container, and summed over many idle containers (one shim each);
//  3. stop latency with N extra processes that exit on SIGTERM, and how many graceful TERMed;
//     and the host-size sweep: the stop of a 10-process container with 0, 5 000, 20 000 idle
//     processes on the host (graceful's stop time should stay flat);
//  4. membership (process.BenchmarkMembers, run through go test): Scope.Members, from the
//     container's own lists, and Scope.AllMembers, the full pass over /proc a drain runs aside;
//  5. grace accuracy: when a TERM-ignoring process is SIGKILLed, against the grace period;
//  6. idle cost: context switches and CPU time of an idle container's shim;
//  7. graceful-init against tini-static: PID 1's memory (smaps_rollup) and the start latency of
//     the main process under either, against no init.
//  8. as on an older kernel (-emulate-kernel, default 6.1): membership (with section 4) and the
//     stop at N = 1000 (with section 3, in a second stack) again, with kernelemu builds that take
//     that kernel's fallbacks.
//
// It prints a table and writes OUT/benchmarks.md, OUT/stop-latency.svg, OUT/host-size.svg,
// OUT/init-start-latency.svg and OUT/init-memory.svg. Run it as root:
//
//	go run ./integration/bench -reps 5 -out docs   # the full run (make bench)
//	go run ./integration/bench -smoke              # tiny sizes, one repetition (CI)
//
// -only runs some sections (start,rss,stop,hostsize,scan,grace,idle,init); -cpuprofile-dir DIR asks the graceful
// shims for a CPU profile of each stop (GRACEFUL_CPUPROFILE_DIR).
//
// Missed targets are reported, not fatal; the exit status is non-zero when a measurement failed or
// a correctness check did not hold (graceful did not TERM every process, a pids limit capped N,
// something was left behind).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// config is what one run measures.
type config struct {
	reps         int           // repetitions per runtime for most measurements
	startSamples int           // start latency samples per runtime
	graceReps    int           // grace accuracy samples
	stopReps     int           // stops per N (and per host size) and runtime
	initSamples  int           // samples per variant of section 7 (no init, graceful-init, tini)
	stopNs       []int         // extra processes for the stop latency
	hostSizes    []int         // idle host processes for the host-size sweep
	manyN        int           // idle containers for the summed RSS
	idle         time.Duration // idle window
	scanN        int           // processes per namespace for the membership scan
	scanBench    string        // go test -benchtime for the scan
	out          string
	profileDir   string
	// stopOrder, when set, is the graceful runtime's stop order for the stop latency and
	// host-size sections (annotation io.containerd.graceful.v2.stop-order); "" leaves it auto.
	stopOrder string
	// emulate, when set, is an older kernel release ("6.1") at which membership and the stop at
	// emulateN are measured again, beside the native figures: kernelemu builds, as on that kernel.
	emulate  string
	emulateN int
	smoke    bool
	only     map[string]bool
}

func (c *config) runs(section string) bool { return len(c.only) == 0 || c.only[section] }

// releasePattern is what -emulate-kernel accepts: MAJOR.MINOR.
var releasePattern = regexp.MustCompile(`^[0-9]+\.[0-9]+$`)

func main() {
	os.Exit(mainCode())
}

func mainCode() int {
	var (
		reps         = flag.Int("reps", 5, "repetitions per runtime (alternating graceful, stock)")
		smoke        = flag.Bool("smoke", false, "tiny sizes and one repetition, for CI (well under a minute); writes to a temp dir unless -out is given")
		out          = flag.String("out", "docs", "directory for benchmarks.md and stop-latency.svg")
		startSamples = flag.Int("start-samples", 0, "start latency samples per runtime (default 4×reps)")
		graceReps    = flag.Int("grace-reps", 0, "grace accuracy samples (default 2×reps)")
		stopReps     = flag.Int("stop-reps", 0, "stops per N (and host size) and runtime (default 4×reps+1: a stop's time varies by ±10-15 % from run to run, and the targets are 5 %)")
		initSamples  = flag.Int("init-samples", 0, "samples per variant (no init, graceful-init, tini) of the init comparison (default 4×reps)")
		stopNs       = flag.String("stop-n", "100,500,1000,5000", "comma list of extra process counts for the stop latency")
		hostSizes    = flag.String("host-sizes", "0,5000,20000", "comma list of idle host process counts for the host-size sweep (must fit under kernel.pid_max)")
		manyN        = flag.Int("containers", 50, "idle containers for the summed shim RSS")
		idle         = flag.Duration("idle", 30*time.Second, "idle window for the idle cost")
		scanN        = flag.Int("scan-n", 5000, "processes per namespace for the membership scan (GRACEFUL_BENCH_SCAN_N)")
		profileDir   = flag.String("cpuprofile-dir", "", "passed to the shims as GRACEFUL_CPUPROFILE_DIR: a shim that supports it writes a CPU profile of each stop there")
		stopOrder    = flag.String("stop-order", "", "the graceful runtime's stop order for the stop sections: auto (default), init-first or children-first")
		emulate      = flag.String("emulate-kernel", "6.1", "an older kernel release to measure membership and the stop at N = 1000 as on, beside the native figures (kernelemu builds; see process/kernel.go); empty for none")
		only         = flag.String("only", "", "comma list of sections to run (start,rss,stop,hostsize,scan,grace,idle,init); default all")
	)
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := &config{reps: *reps, startSamples: *startSamples, graceReps: *graceReps, stopReps: *stopReps, initSamples: *initSamples, manyN: *manyN, idle: *idle,
		scanN: *scanN, out: *out, profileDir: *profileDir, smoke: *smoke, only: map[string]bool{}}
	switch *stopOrder {
	case "", "auto", "init-first", "children-first":
		cfg.stopOrder = strings.TrimPrefix(*stopOrder, "auto")
	default:
		fmt.Fprintf(os.Stderr, "bench: -stop-order %q: want auto, init-first or children-first\n", *stopOrder)
		os.Exit(2)
	}
	if *emulate != "" && !releasePattern.MatchString(*emulate) {
		fmt.Fprintf(os.Stderr, "bench: -emulate-kernel %q: want a release such as 6.1 or 5.10, or empty for none\n", *emulate)
		return 2
	}
	cfg.emulate, cfg.emulateN = *emulate, 1000
	for _, n := range strings.Split(*stopNs, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil || v < 1 {
			fmt.Fprintf(os.Stderr, "bench: -stop-n %q: want a comma list of positive integers\n", *stopNs)
			return 2
		}
		cfg.stopNs = append(cfg.stopNs, v)
	}
	for _, n := range strings.Split(*hostSizes, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil || v < 0 {
			fmt.Fprintf(os.Stderr, "bench: -host-sizes %q: want a comma list of non-negative integers\n", *hostSizes)
			return 2
		}
		cfg.hostSizes = append(cfg.hostSizes, v)
	}
	if *only != "" {
		for _, s := range strings.Split(*only, ",") {
			cfg.only[strings.TrimSpace(s)] = true
		}
	}
	if cfg.smoke {
		pick := func(name string, v *int, smoke int) {
			if !set[name] {
				*v = smoke
			}
		}
		pick("reps", &cfg.reps, 1)
		pick("start-samples", &cfg.startSamples, 1)
		pick("grace-reps", &cfg.graceReps, 1)
		pick("stop-reps", &cfg.stopReps, 1)
		pick("init-samples", &cfg.initSamples, 2)
		pick("containers", &cfg.manyN, 3)
		pick("scan-n", &cfg.scanN, 100)
		if !set["stop-n"] {
			cfg.stopNs = []int{20}
		}
		cfg.emulateN = 20
		if !set["host-sizes"] {
			cfg.hostSizes = []int{0, 200}
		}
		if !set["idle"] {
			cfg.idle = 3 * time.Second
		}
		if !set["out"] {
			cfg.out = filepath.Join(os.TempDir(), "graceful-bench-smoke")
		}
		cfg.scanBench = "20x"
	} else {
		cfg.scanBench = fmt.Sprintf("%dx", 10*cfg.reps)
	}
	if cfg.startSamples <= 0 {
		cfg.startSamples = 4 * cfg.reps
	}
	if cfg.initSamples <= 0 {
		cfg.initSamples = 4 * cfg.reps
	}
	if cfg.graceReps <= 0 {
		cfg.graceReps = 2 * cfg.reps
	}
	if cfg.stopReps <= 0 {
		cfg.stopReps = 4*cfg.reps + 1
	}
	if cfg.reps < 1 {
		fmt.Fprintln(os.Stderr, "bench: -reps must be at least 1")
		return 2
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	b, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if len(b.failures) > 0 {
		fmt.Fprintln(os.Stderr, "\nbench: failed:")
		for _, f := range b.failures {
			fmt.Fprintln(os.Stderr, "  -", f)
		}
		return 1
	}
	return 0
}

// run measures everything, closes the stack and writes the results.
func run(ctx context.Context, cfg *config) (*bench, error) {
	started := time.Now()
	b := &bench{cfg: cfg, machine: readMachine()}
	logf("graceful vs stock benchmark: %d repetitions; stop N=%v; host sizes %v; %d idle containers; idle window %v; scan N=%d%s",
		cfg.reps, cfg.stopNs, cfg.hostSizes, cfg.manyN, cfg.idle, cfg.scanN, map[bool]string{true: " (smoke)", false: ""}[cfg.smoke])

	if cfg.runs("scan") {
		// Before the stack, so that no container is around: the scan runs against the host's
		// process table as it is.
		b.section("scan", func() error { return b.runScan(ctx) })
	}
	if ctx.Err() == nil && (cfg.runs("start") || cfg.runs("rss") || cfg.runs("stop") || cfg.runs("hostsize") || cfg.runs("grace") || cfg.runs("idle") || cfg.runs("init")) {
		if err := b.withStack(ctx, ""); err != nil {
			return b, err
		}
	}
	if ctx.Err() == nil && cfg.runs("stop") && cfg.emulate != "" {
		// A stack of its own, whose graceful shims behave as the older kernel.
		if err := b.withStack(ctx, cfg.emulate); err != nil {
			return b, err
		}
	}
	if ctx.Err() != nil {
		return b, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	b.machine.loadEnd = loadAvg()
	b.elapsed = time.Since(started)
	rows := b.rows()
	table := markdownTable(rows)
	fmt.Println()
	fmt.Println(table)
	if b.init != nil {
		fmt.Println(initTable(b.init.rows()))
	}
	if err := b.write(rows); err != nil {
		return b, err
	}
	logf("done in %v; wrote %s, %s, %s and the init plots", b.elapsed.Round(time.Second),
		filepath.Join(cfg.out, "benchmarks.md"), filepath.Join(cfg.out, "stop-latency.svg"), filepath.Join(cfg.out, "host-size.svg"))
	return b, nil
}

// withStack starts the private containerd, runs the container measurements and removes everything
// again, checking that nothing of the stack is left. With emulate set (a release), the graceful
// shims are kernelemu builds that behave as that kernel, and only the stop at emulateN runs.
func (b *bench) withStack(ctx context.Context, emulate string) (retErr error) {
	logf("starting a private containerd %s with both shims%s...", stack.ContainerdVersion(), map[bool]string{true: ", graceful as on Linux " + emulate}[emulate != ""])
	// An absent defaults file: the graceful shim runs with its built-in defaults plus the
	// benchmark's annotations, whatever /etc/containerd/graceful.toml says.
	noDefaults := filepath.Join(os.TempDir(), fmt.Sprintf("graceful-bench-%d-no-defaults.toml", os.Getpid()))
	env := []string{"GRACEFUL_CONFIG_FILE=" + noDefaults}
	if b.cfg.profileDir != "" {
		dir, err := filepath.Abs(b.cfg.profileDir)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		env = append(env, "GRACEFUL_CPUPROFILE_DIR="+dir)
	}
	s, err := stack.Start(ctx, stack.Options{Env: env, EmulateKernel: emulate})
	if err != nil {
		return fmt.Errorf("start the stack: %w", err)
	}
	b.stack = s
	defer func() {
		dir := s.Dir
		if err := s.Close(); err != nil && retErr == nil {
			retErr = fmt.Errorf("close the stack: %w", err)
		}
		if left := stack.Shims(dir); len(left) > 0 {
			b.failf("cleanup: shim processes %v of %s still running after Close", left, dir)
		}
		if _, err := os.Stat(dir); err == nil {
			b.failf("cleanup: %s still exists after Close", dir)
		}
	}()
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	b.reports = subscribe(subCtx, s)
	if emulate != "" {
		b.section("stop-emulated", func() error { return b.emulatedStop(ctx, emulate) })
		return nil
	}
	b.machine.readStack(ctx, s)

	if b.cfg.runs("start") || b.cfg.runs("rss") {
		b.section("start", func() error { return b.startLatency(ctx) })
	}
	if b.cfg.runs("rss") {
		b.section("rss", func() error { return b.manyRSS(ctx) })
	}
	if b.cfg.runs("stop") {
		b.section("stop", func() error { return b.stopLatency(ctx) })
	}
	if b.cfg.runs("hostsize") {
		b.section("hostsize", func() error { return b.hostSizeSweep(ctx) })
	}
	if b.cfg.runs("grace") {
		b.section("grace", func() error { return b.graceAccuracy(ctx) })
	}
	if b.cfg.runs("idle") {
		b.section("idle", func() error { return b.idleCost(ctx) })
	}
	if b.cfg.runs("init") {
		b.section("init", func() error { return b.initSection(ctx) })
	}
	return nil
}

// section runs one measurement; its error is recorded and the run goes on with the next one.
func (b *bench) section(name string, f func() error) {
	t := time.Now()
	if err := f(); err != nil {
		b.failf("%s: %v", name, err)
		logf("%s: FAILED after %v: %v", name, time.Since(t).Round(time.Millisecond), err)
		return
	}
	logf("%s: done in %v", name, time.Since(t).Round(time.Millisecond))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
