package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/graceful-shim/graceful/initproc"
	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
	"github.com/graceful-shim/graceful/shim"
)

// 7. graceful-init against tini: the memory of the init as PID 1 and the start latency of the
// main process under it, against no init at all. Every variant runs under the graceful runtime
// with the same main process; only PID 1 differs.

// tiniHost is the static tini of Debian's tini package (the init behind `docker --init`), and
// tiniMountPoint where the benchmark bind-mounts it, read-only, into its containers.
const (
	tiniHost       = "/usr/bin/tini-static"
	tiniMountPoint = "/dev/.tini-static"
	initAnnotation = shim.AnnotationInit
	gracefulInitAt = shim.InitMountPoint
)

// initMain is the main process of every variant: it prints "ready" once it runs, then becomes
// busybox sleep (the process whose memory is beside the init's, and that the init waits for).
var initMain = []string{"sh", "-c", "echo ready; exec sleep 1000"}

// initVariant is one way of running initMain.
type initVariant struct {
	name  string // no-init, graceful-init, graceful-init-entrypoint, tini
	label string // its column in the table
	// argv0 is PID 1's argv[0] once the main process runs: the init's path in the container, or
	// sleep's without an init; opts, the init's arguments up to the main process's argv.
	argv0 string
	opts  []string
}

var initVariants = []initVariant{
	{name: "no-init", label: "no init", argv0: "sleep"},
	{name: "graceful-init", label: "graceful-init (shim, init = true)", argv0: gracefulInitAt, opts: []string{initproc.ShimFlag, "--"}},
	{name: "graceful-init-entrypoint", label: "graceful-init (entrypoint)", argv0: entrypointInitAt, opts: []string{"--"}},
	{name: "tini", label: "tini-static", argv0: tiniMountPoint, opts: []string{"--"}},
}

// entrypointInitAt is where the entrypoint variant bind-mounts the stack's graceful-init, as an
// image would carry it; entrypointInitHost is that binary, set when the section starts.
const entrypointInitAt = "/dev/.graceful-init-entrypoint"

var entrypointInitHost string

// gracefulVariants are the variants whose figures have targets.
var gracefulVariants = []string{"graceful-init", "graceful-init-entrypoint"}

func (v initVariant) spec(id string) stack.Spec {
	s := stack.Spec{ID: id, Runtime: stack.GracefulRuntime, Args: initMain}
	switch v.name {
	case "graceful-init":
		s.Annotations = map[string]string{initAnnotation: "true"}
	case "graceful-init-entrypoint":
		s.Args = append([]string{entrypointInitAt, "--"}, initMain...)
		s.Mounts = []specs.Mount{{Destination: entrypointInitAt, Type: "bind", Source: entrypointInitHost,
			Options: []string{"bind", "ro", "nosuid", "nodev"}}}
	case "tini":
		s.Args = append([]string{tiniMountPoint, "--"}, initMain...)
		s.Mounts = []specs.Mount{{Destination: tiniMountPoint, Type: "bind", Source: tiniHost,
			Options: []string{"bind", "ro", "nosuid", "nodev"}}}
	}
	return s
}

// initMemory is a process's memory from /proc/PID/smaps_rollup, in bytes; fileDirty is the part
// of privateDirty in file mappings (from /proc/PID/smaps), the rest being anonymous memory.
// writableDirty is privateDirty in writable mappings only: the pages each process has of its
// own. A binary on tmpfs (the stack's shim, in /run) shows its read-only pages as private dirty
// while one process maps them, though every process of that binary shares them.
type initMemory struct{ rss, pss, privateDirty, fileDirty, writableDirty int64 }

func readSmapsRollup(pid int) (initMemory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return initMemory{}, err
	}
	var m initMemory
	found := 0
	for _, f := range []struct {
		key string
		v   *int64
	}{{"Rss", &m.rss}, {"Pss", &m.pss}, {"Private_Dirty", &m.privateDirty}} {
		if kb, ok := statusValue(data, f.key); ok {
			*f.v = kb * 1024
			found++
		}
	}
	if found != 3 || m.rss == 0 {
		return initMemory{}, fmt.Errorf("/proc/%d/smaps_rollup without Rss, Pss and Private_Dirty: %q", pid, data)
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return initMemory{}, err
	}
	file, writable := false, false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			// A mapping's header: range perms offset dev inode [path].
			file = len(f) >= 6 && strings.HasPrefix(f[5], "/")
			writable = strings.Contains(f[1], "w")
			continue
		}
		if len(f) >= 2 && f[0] == "Private_Dirty:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			if file {
				m.fileDirty += kb * 1024
			}
			if writable {
				m.writableDirty += kb * 1024
			}
		}
	}
	return m, nil
}

// initResults are the figures of section 7, by variant name.
type initResults struct {
	samples int
	// start: Task.Start called → the client read "ready"; startCall: Task.Start called → it
	// returned; createReady: NewContainer called → "ready" (includes the check of graceful-init's copy at
	// Create). All in ns.
	start, startCall, createReady samples
	rss, pss, privateDirty        samples // bytes, of PID 1
	fileDirty, anonDirty          samples // bytes: privateDirty in PID 1's file mappings, and the rest
	mainRSS                       samples // bytes, of the main process (busybox sleep)
}

func (b *bench) initSection(ctx context.Context) error {
	if _, err := os.Stat(tiniHost); err != nil {
		return fmt.Errorf("tini: %w (Debian's tini package; make stack installs it)", err)
	}
	r := &initResults{samples: b.cfg.initSamples, start: samples{}, startCall: samples{}, createReady: samples{},
		rss: samples{}, pss: samples{}, privateDirty: samples{},
		fileDirty: samples{}, anonDirty: samples{}, mainRSS: samples{}}
	b.init = r
	entrypointInitHost = filepath.Join(b.stack.Dir, "bin", "graceful-init")
	// One start of each variant first, not measured (cold caches, the first copy of graceful-init).
	for _, v := range initVariants {
		if err := b.initOnce(ctx, v, nil); err != nil {
			return fmt.Errorf("warm-up %s: %w", v.name, err)
		}
	}
	for i := 0; i < r.samples; i++ {
		// Interleaved, and rotated each round so that no variant always runs right after another.
		for k := range initVariants {
			v := initVariants[(i+k)%len(initVariants)]
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := b.initOnce(ctx, v, r); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
		ms := func(name string) time.Duration {
			return time.Duration(last(r.start[name])).Round(100 * time.Microsecond)
		}
		logf("init %d/%d: Start → ready: no-init %v, graceful-init %v (entrypoint %v), tini %v; Private_Dirty graceful-init %.0f KiB, tini %.0f KiB",
			i+1, r.samples, ms("no-init"), ms("graceful-init"), ms("graceful-init-entrypoint"), ms("tini"),
			last(r.privateDirty["graceful-init"])/1024, last(r.privateDirty["tini"])/1024)
	}
	return nil
}

// initOnce runs one container of variant v, records its figures in r (unless nil), and removes it.
func (b *bench) initOnce(ctx context.Context, v initVariant, r *initResults) error {
	t0 := time.Now()
	c, err := b.stack.Create(ctx, v.spec(b.nextID("init-"+v.name, stack.GracefulRuntime)))
	if err != nil {
		return err
	}
	defer b.deleteContainer(c)
	t1 := time.Now()
	if err := c.Task.Start(namespaces.WithNamespace(ctx, stack.Namespace)); err != nil {
		return fmt.Errorf("start task %s: %w", c.ID, err)
	}
	t2 := time.Now()
	if err := c.Output.WaitLine("ready", 30*time.Second); err != nil {
		return fmt.Errorf("%s: %w", c.ID, err)
	}
	t3 := time.Now()
	pid := int(c.Task.Pid())
	main, err := checkInit(pid, v)
	if err != nil {
		return fmt.Errorf("%s: %w", c.ID, err)
	}
	time.Sleep(300 * time.Millisecond) // past the start's own allocations
	mem, err := readSmapsRollup(pid)
	if err != nil {
		return fmt.Errorf("%s: PID 1: %w", c.ID, err)
	}
	mainMem, err := readSmapsRollup(main)
	if err != nil {
		return fmt.Errorf("%s: main process: %w", c.ID, err)
	}
	if _, err := checkInit(pid, v); err != nil { // still PID 1, main still under it
		return fmt.Errorf("%s: after reading its memory: %w", c.ID, err)
	}
	if r == nil {
		return nil
	}
	r.start.add(v.name, float64(t3.Sub(t1)))
	r.startCall.add(v.name, float64(t2.Sub(t1)))
	r.createReady.add(v.name, float64(t3.Sub(t0)))
	r.rss.add(v.name, float64(mem.rss))
	r.pss.add(v.name, float64(mem.pss))
	r.privateDirty.add(v.name, float64(mem.privateDirty))
	r.fileDirty.add(v.name, float64(mem.fileDirty))
	r.anonDirty.add(v.name, float64(mem.privateDirty-mem.fileDirty))
	r.mainRSS.add(v.name, float64(mainMem.rss))
	return nil
}

// checkInit checks that the task's process pid is PID 1 of its namespace and is the variant's
// init (or, without one, the main process itself), and that the main process (busybox sleep, once
// sh exec'd it) runs under it. It returns the main process's pid.
func checkInit(pid int, v initVariant) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		main, err := findMain(pid, v)
		if err == nil || time.Now().After(deadline) {
			return main, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func findMain(pid int, v initVariant) (int, error) {
	st, err := process.ReadStatus(pid)
	if err != nil {
		return 0, fmt.Errorf("the task's process: %w", err)
	}
	if !st.NamespaceInit() {
		return 0, fmt.Errorf("the task's process %d (%s) is not PID 1 of its namespace: NSpid %v", pid, st.Name, st.NSpid)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, fmt.Errorf("PID 1 (%d): %w", pid, err)
	}
	argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	if v.name == "no-init" {
		if st.Name != "sleep" {
			return 0, fmt.Errorf("PID 1 (%d) is %q (argv %q), want the main process, sleep", pid, st.Name, argv)
		}
		return pid, nil
	}
	if len(argv) < 2+len(v.opts) || argv[0] != v.argv0 || !slices.Equal(argv[1:1+len(v.opts)], v.opts) {
		return 0, fmt.Errorf("PID 1 (%d, %s) runs %q, want [%s %s main...]", pid, st.Name, argv, v.argv0, strings.Join(v.opts, " "))
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var children []string
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cs, err := process.ReadStatus(n); err == nil && cs.PPid == pid && cs.Tgid == n {
			if cs.Name == "sleep" {
				return n, nil
			}
			children = append(children, fmt.Sprintf("%d %s", n, cs.Name))
		}
	}
	return 0, fmt.Errorf("no main process (sleep) under PID 1 %s (%d); its children: [%s]", st.Name, pid, strings.Join(children, ", "))
}

// Targets of section 7.
const (
	initStartTarget = 1.05      // graceful-init's start latency over no init's
	initDirtyBudget = 320 << 10 // graceful-init's Private_Dirty as PID 1
)

// initRows is the table of section 7.
func (r *initResults) rows() []initRow {
	var rows []initRow
	short := func(name string) string {
		return map[string]string{"graceful-init": "shim", "graceful-init-entrypoint": "entrypoint", "tini": "tini"}[name]
	}
	latency := func(metric string, s samples, target bool) {
		none := summarise(s["no-init"])
		row := initRow{metric: metric, target: "—", met: "—"}
		var ratios, met []string
		for _, v := range initVariants {
			st := summarise(s[v.name])
			row.cells = append(row.cells, millis.cell(st))
			if v.name == "no-init" {
				continue
			}
			ratio, text := ratioOf(st, none)
			ratios = append(ratios, short(v.name)+" "+text)
			if target && slices.Contains(gracefulVariants, v.name) && st.n > 0 && none.n > 0 {
				met = append(met, short(v.name)+": "+yesNo(ratio <= initStartTarget))
			}
		}
		row.ratios = strings.Join(ratios, ", ")
		if target {
			row.target = fmt.Sprintf("graceful-init / no init ≤ %.2f", initStartTarget)
			if len(met) > 0 {
				row.met = strings.Join(met, ", ")
			}
		}
		rows = append(rows, row)
	}
	latency("start latency: Task.Start called → main process's `ready` read by the client", r.start, true)
	latency("… Task.Start called → Task.Start returned", r.startCall, false)
	latency("… NewContainer called → `ready` (includes Create, where the shim checks its copy of graceful-init)", r.createReady, false)
	kib := unit{name: "KiB", scale: 1024, digits: 0}
	memory := func(metric string, s samples, budget int64) {
		t := summarise(s["tini"])
		row := initRow{metric: metric, target: "—", met: "—"}
		var ratios, met []string
		for _, v := range initVariants {
			if v.name == "no-init" {
				row.cells = append(row.cells, "— (no init)")
				continue
			}
			st := summarise(s[v.name])
			row.cells = append(row.cells, kib.cell(st))
			if v.name == "tini" {
				continue
			}
			if st.n > 0 && t.n > 0 && t.median > 0 {
				ratios = append(ratios, fmt.Sprintf("%s / tini %.2f", short(v.name), st.median/t.median))
			}
			if budget > 0 && st.n > 0 {
				met = append(met, short(v.name)+": "+yesNo(st.max <= float64(budget)))
			}
		}
		row.ratios = strings.Join(ratios, ", ")
		if row.ratios == "" {
			row.ratios = "—"
		}
		if budget > 0 {
			row.target = fmt.Sprintf("graceful-init ≤ %s in every sample", kib.format(float64(budget)))
			if len(met) > 0 {
				row.met = strings.Join(met, ", ")
			}
		}
		rows = append(rows, row)
	}
	memory("PID 1 memory: Private_Dirty (smaps_rollup)", r.privateDirty, initDirtyBudget)
	memory("… of which anonymous (heap, stacks, data; smaps)", r.anonDirty, 0)
	memory("… of which in file mappings (the init's binary; smaps)", r.fileDirty, 0)
	memory("PID 1 memory: Pss (smaps_rollup)", r.pss, 0)
	memory("PID 1 memory: Rss (smaps_rollup)", r.rss, 0)
	row := initRow{metric: "for scale: the main process (busybox `sleep`), Rss", ratios: "—", target: "—", met: "—"}
	for _, v := range initVariants {
		cell := kib.cell(summarise(r.mainRSS[v.name]))
		if v.name == "no-init" {
			cell += " (it is PID 1)"
		}
		row.cells = append(row.cells, cell)
	}
	return append(rows, row)
}

// initRow is a row of section 7's table: a cell per variant, then the ratios, target and result.
type initRow struct {
	metric              string
	cells               []string
	ratios, target, met string
}

func initTable(rows []initRow) string {
	var sb strings.Builder
	sb.WriteString("| metric |")
	for _, v := range initVariants {
		sb.WriteString(" " + v.label + " |")
	}
	sb.WriteString(" ratios | target | met? |\n|" + strings.Repeat(" --- |", len(initVariants)+4) + "\n")
	for _, r := range rows {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s |\n", r.metric, strings.Join(r.cells, " | "), r.ratios, r.target, r.met)
	}
	return sb.String()
}

// Plot files of section 7.
const (
	initStartSVG  = "init-start-latency.svg"
	initMemorySVG = "init-memory.svg"
)

func (r *initResults) startChart() barChart {
	c := barChart{title: fmt.Sprintf("Start latency with and without an init (median, min–max, %d samples each)", r.samples),
		yLabel: "ms", u: millis, colors: seriesColors[:len(initVariants)]}
	for _, v := range initVariants {
		c.series = append(c.series, v.label)
	}
	for _, g := range []struct {
		label string
		s     samples
	}{{"Task.Start → ready", r.start}, {"Task.Start returns", r.startCall}, {"NewContainer → ready", r.createReady}} {
		var bars []stats
		for _, v := range initVariants {
			bars = append(bars, summarise(g.s[v.name]))
		}
		c.groups = append(c.groups, barGroup{label: g.label, bars: bars})
	}
	n := summarise(r.start["no-init"])
	if n.n > 0 && n.median > 0 {
		var parts []string
		for _, v := range initVariants[1:] {
			if g := summarise(r.start[v.name]); g.n > 0 {
				parts = append(parts, fmt.Sprintf("%s ×%.3f", v.label, g.median/n.median))
			}
		}
		c.note = "Start → ready: " + strings.Join(parts, ", ")
	}
	return c
}

func (r *initResults) memoryChart() barChart {
	kib := unit{name: "KiB", scale: 1024, digits: 0}
	c := barChart{title: fmt.Sprintf("Memory of the init as PID 1, smaps_rollup (median, min–max, %d samples each)", r.samples),
		yLabel: "KiB", u: kib, colors: seriesColors[1:len(initVariants)],
		note: "Private_Dirty split from /proc/PID/smaps: anonymous memory, and the pages of file mappings (the init's binary)"}
	for _, v := range initVariants[1:] {
		c.series = append(c.series, v.label)
	}
	for _, g := range []struct {
		label string
		s     samples
		ref   float64
	}{{"Private_Dirty", r.privateDirty, initDirtyBudget}, {"… anonymous", r.anonDirty, 0}, {"… file mappings", r.fileDirty, 0},
		{"Pss", r.pss, 0}, {"Rss", r.rss, 0}} {
		bg := barGroup{label: g.label, ref: g.ref}
		for _, v := range initVariants[1:] {
			bg.bars = append(bg.bars, summarise(g.s[v.name]))
		}
		if g.ref > 0 {
			bg.refLabel = "budget " + strings.TrimSuffix(kib.format(g.ref), " KiB")
		}
		c.groups = append(c.groups, bg)
	}
	return c
}

// write writes the plots of section 7 into dir.
func (r *initResults) write(dir string) error {
	if err := r.startChart().save(filepath.Join(dir, initStartSVG)); err != nil {
		return err
	}
	return r.memoryChart().save(filepath.Join(dir, initMemorySVG))
}

// markdown is section 7 of benchmarks.md.
func (r *initResults) markdown() string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("\n## graceful-init against tini\n\n")
	w("PID 1 of a container under the graceful runtime in four variants, with the same main process `sh -c 'echo ready; exec sleep 1000'`: no init (no annotation: the main process is PID 1); graceful-init under the shim (annotation `%s=true`: the shim mounts its copy at `%s`, runs `[%s, --shim, --, main...]` and watches the main process from Start on); graceful-init as the image's entrypoint (the spec bind-mounts the stack's build read-only at `%s` and runs `[%s, --, main...]`, as `docker run --init` or an `ENTRYPOINT` would: the shim knows nothing of it); and Debian's `%s` (the init behind `docker --init`) doing the same job (bind-mounted at `%s`, `[%s, --, main...]`). %d samples per variant, interleaved round by round in one run (the order rotates each round), after one unmeasured start of each.\n\n",
		initAnnotation, gracefulInitAt, gracefulInitAt, entrypointInitAt, entrypointInitAt, tiniHost, tiniMountPoint, tiniMountPoint, r.samples)
	sb.WriteString(initTable(r.rows()))
	w("\n![Start latency: no init, graceful-init under the shim and as the entrypoint, tini](%s)\n\n![Memory of the init as PID 1: graceful-init, tini](%s)\n\n", initStartSVG, initMemorySVG)
	w("- **Start latency**: the container and its task are created first (`NewContainer`, `NewTask`); the figure is from the `Task.Start` call until the client has read the main process's `ready` from the task's stdout: that line is written only once the main process runs, under the init when there is one, so it includes the init's own start and its fork+exec of the main process. The stdout path (FIFO, shim, client) is the same in every variant. Also shown: until `Task.Start` returns, and from before `NewContainer` (which includes the shim's check of its copy of graceful-init at Create). Speed goals are reported, not gated.\n")
	w("- **Memory**: `Rss`, `Pss` and `Private_Dirty` of `/proc/PID1/smaps_rollup`, read 300 ms after `ready`, where PID1 is the task's process; before and after the read the benchmark checks that it is PID 1 of its namespace (`NSpid` ends in 1), that its command is the init's, and that the main process (`sleep`) is its child; a failed check fails the run (and `make bench-smoke`). Pss splits the pages shared with other processes (e.g. the other containers' inits mapping the same file) among them; Private_Dirty is what each extra container costs for sure. It is split, from `/proc/PID1/smaps`, into anonymous memory (heap, stacks, the binary's written data and bss) and the dirty pages of file mappings: graceful-init runs from the shim's one copy per binary content in `/var/lib/graceful-shim` (written to disk once, so its text pages are clean and shared by every container, as tini's from `%s` are)\n", tiniHost)
	w("\n### Samples\n\n| variant | Task.Start → ready (ms) | PID 1 Private_Dirty (KiB) | … in file mappings (KiB) | PID 1 Pss (KiB) | PID 1 Rss (KiB) |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, v := range initVariants {
		w("| %s | %s | %s | %s | %s | %s |\n", v.name, msList(r.start[v.name]), numList(r.privateDirty[v.name], 1024), numList(r.fileDirty[v.name], 1024),
			numList(r.pss[v.name], 1024), numList(r.rss[v.name], 1024))
	}
	return sb.String()
}
