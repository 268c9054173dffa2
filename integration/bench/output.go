package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Targets.
const (
	startTarget     = 1.02
	rssTarget       = 1.05
	stopTarget      = 1.10
	scanTarget      = 10 * time.Millisecond
	overshootTarget = 25 * time.Millisecond
)

// rows builds the results table from what was measured.
func (b *bench) rows() []row {
	var rows []row
	ratioRow := func(metric string, s samples, u unit, target float64) {
		g, st := s.g(), s.s()
		r, rs := ratioOf(g, st)
		met := "—"
		if g.n > 0 && st.n > 0 {
			met = yesNo(r <= target)
		}
		rows = append(rows, row{metric, u.cell(g), u.cell(st), rs, fmt.Sprintf("ratio ≤ %.2f", target), met})
	}
	infoRow := func(metric string, s samples, u unit) {
		g, st := s.g(), s.s()
		_, rs := ratioOf(g, st)
		if g.n > 0 && st.n > 0 && g.median == 0 && st.median == 0 {
			rs = "— (both 0)"
		}
		rows = append(rows, row{metric, u.cell(g), u.cell(st), rs, "—", "—"})
	}
	lessRow := func(metric string, s samples, u unit) {
		g, st := s.g(), s.s()
		_, rs := ratioOf(g, st)
		if g.median == 0 && st.median == 0 {
			rs = "— (both 0)"
		}
		met := "—"
		if g.n > 0 && st.n > 0 {
			met = yesNo(g.median <= st.median)
		}
		rows = append(rows, row{metric, u.cell(g), u.cell(st), rs, "graceful ≤ stock", met})
	}

	if b.startRun != nil {
		ratioRow("start latency: create+start until Task.Start returns", b.startRun, millis, startTarget)
		infoRow("start latency: create+start until the container printed `ready`", b.startReady, millis)
		ratioRow("shim RSS, 1 idle container", b.rssOne, mebibyte, rssTarget)
	}
	if b.rssMany != nil {
		ratioRow(fmt.Sprintf("shim RSS summed over %d idle containers (one shim each)", b.cfg.manyN), b.rssMany, mebibyte, rssTarget)
	}
	for _, p := range b.stops {
		ratioRow(fmt.Sprintf("stop latency, N = %d extra processes (SIGTERM)", p.n), p.latency, millis, stopTarget)
		minTermed := p.n
		for _, t := range p.termed {
			minTermed = min(minTermed, t)
		}
		cell := "—"
		if len(p.termed) > 0 {
			cell = fmt.Sprintf("%d/%d in every run", minTermed, p.n)
			if minTermed < p.n {
				cell = fmt.Sprintf("as few as %d/%d", minTermed, p.n)
			}
		}
		met := "—"
		if len(p.termed) > 0 {
			met = yesNo(minTermed == p.n && len(p.termed) == len(p.latency[stack.GracefulRuntime]))
		}
		rows = append(rows, row{fmt.Sprintf("… N = %d: processes that exited after SIGTERM (stop report)", p.n), cell,
			"0 (SIGKILLed by the kernel's zap)", "—", "all N", met})
	}
	if b.scan.raw != "" {
		st := b.scan.st
		rows = append(rows, row{fmt.Sprintf("membership scan (one `Scope.Members()`), %d members + %d in a sibling PID namespace, %d scans", b.cfg.scanN, b.cfg.scanN, st.n),
			millis.cell(st), "— (no scan)", "—", fmt.Sprintf("≤ %v", scanTarget), yesNo(st.median <= float64(scanTarget))})
	}
	if b.graceOvershoot != nil {
		st := summarise(b.graceOvershoot)
		rows = append(rows, row{fmt.Sprintf("grace accuracy: drain end − G (G = %v, TERM-ignoring child, %d runs)", graceAccuracy, st.n),
			micro(st), "— (no grace)", "—", fmt.Sprintf("≤ %v in every run", overshootTarget), yesNo(st.max <= float64(overshootTarget))})
		rows = append(rows, row{"grace accuracy: stop latency − G, seen by the client", micro(summarise(b.graceStop)), "—", "—", "—", "—"})
	}
	if b.idleSwitches != nil {
		lessRow(fmt.Sprintf("idle: shim context switches over %v", b.cfg.idle), b.idleSwitches, count)
		lessRow(fmt.Sprintf("idle: seconds (of %v) in which the shim ran at all", b.cfg.idle), b.idleActive, count)
		lessRow(fmt.Sprintf("idle: shim CPU time (schedstat, ns resolution) over %v", b.cfg.idle), b.idleCPU, micros)
		infoRow(fmt.Sprintf("idle: shim CPU time (utime+stime, 10 ms ticks) over %v", b.cfg.idle), b.idleTicks, unit{name: "ms", scale: 1})
	}
	return rows
}

// micro formats sub-millisecond spreads in milliseconds with 2 decimals.
func micro(st stats) string {
	return unit{name: "ms", scale: 1e6, digits: 2}.cell(st)
}

func markdownTable(rows []row) string {
	var sb strings.Builder
	sb.WriteString("| metric | graceful median [min–max] | stock median [min–max] | ratio g/s | target | met? |\n")
	sb.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s |\n", r.metric, r.graceful, r.stock, r.ratio, r.target, r.met)
	}
	return sb.String()
}

// write writes benchmarks.md and stop-latency.svg into the output directory.
func (b *bench) write(rows []row) error {
	if err := os.MkdirAll(b.cfg.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.cfg.out, "stop-latency.svg"), []byte(b.svg()), 0o644); err != nil {
		return err
	}
	if b.init != nil {
		if err := b.init.write(b.cfg.out); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(b.cfg.out, "benchmarks.md"), []byte(b.markdown(rows)), 0o644)
}

func (b *bench) command() string {
	if b.cfg.smoke {
		return "go run ./integration/bench -smoke"
	}
	return fmt.Sprintf("go run ./integration/bench -reps %d -out %s", b.cfg.reps, b.cfg.out)
}

func (b *bench) markdown(rows []row) string {
	var sb strings.Builder
	m := b.machine
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("# Benchmarks: graceful vs the stock runc shim\n\n")
	w("Generated by `%s` (as root; `make bench`) on %s. Do not edit: run it again.\n", b.command(), m.date.Format("2006-01-02 15:04 MST"))
	if b.cfg.smoke {
		w("\n**Smoke run**: tiny sizes and one repetition; the figures say nothing about performance.\n")
	}
	w("\nBoth runtimes run in the same private containerd (`integration/stack`), in the same run, taking turns: graceful, stock, graceful, stock, …\n")
	w("Each figure is the median over the repetitions, with the minimum and maximum in brackets; the ratio is graceful's median over stock's.\n")
	w("Missed targets are marked **NO**; nothing is retried or filtered.\n\n")

	w("## Machine\n\n| | |\n| --- | --- |\n")
	w("| CPUs (nproc) | %d |\n| memory | %s |\n| kernel (`uname -r`) | %s |\n", m.nproc, m.memory, m.kernel)
	w("| containerd | %s |\n| runc | %s |\n| graceful shim | %s, built from %s |\n| Go | %s |\n", m.containerd, m.runc, m.shim, m.source, m.goVersion)
	w("| date | %s |\n| kernel.pid_max | %s |\n| host processes at start | %d |\n", m.date.Format(time.RFC3339), m.pidMax, m.hostProcesses)
	w("| load average at start / end | %s / %s |\n| run took | %v |\n\n", m.loadStart, m.loadEnd, b.elapsed.Round(time.Second))
	w("The machine is shared: other work ran at the same time (see the load average), so absolute times are noisy; the alternation spreads that noise over both runtimes.\n\n")

	w("## Results\n\n")
	sb.WriteString(markdownTable(rows))
	if len(b.stops) > 0 {
		w("\n![Stop latency against the number of extra processes, both shims](stop-latency.svg)\n")
	}
	if len(b.failures) > 0 {
		w("\n### Failures\n\n")
		for _, f := range b.failures {
			w("- %s\n", f)
		}
	}

	if b.init != nil {
		sb.WriteString(b.init.markdown())
	}
	w("\n## How each figure is measured\n\n")
	w("- **Start latency** (%d samples per runtime): `sh -c 'echo ready; exec sleep 100000'`; from before `NewContainer` (snapshot, spec, `NewTask`, which starts the shim) until `Task.Start` returns, and until the container's `ready` reached the client.\n", b.cfg.startSamples)
	w("- **Shim RSS**: `VmRSS` of the shim, found as the parent (`PPid`) of the container's init, 0.5 s after the start (1 container, same samples as the start latency) or 1 s after %d containers started, summed over their distinct shims (%d repetitions per runtime).\n", b.cfg.manyN, b.cfg.reps)
	w("- **Stop latency** (%d repetitions per N and runtime): init is `trap \"exit 0\" TERM`, then two background spawners `(for i in $(seq N/2-1); do sleep 1000 & done; exec sleep 1000) &` (so exactly N sleeps, created twice as fast), `echo ready; wait`; once all N sleeps are in the container's PID namespace (counted through `/proc/PID/ns/pid`), SIGTERM to the task (`Task.Kill`) until its exit event. Graceful's default order (`auto`) is init-first here, since init traps TERM: init exits and is held while the N sleeps get SIGTERM through pidfds; the stock shim's init exits and the kernel SIGKILLs the N sleeps. The processes TERMed are counted from the graceful shim's stop report (topic `/graceful/stop`): outcome `exited` with `SIGTERM` among its signals (a report that details only its first processes gives totals by outcome: there, the `exited` total, less any detailed `exited` process without `SIGTERM`).\n", b.cfg.reps)
	w("- **Membership scan**: `process.BenchmarkMembers` (`%s`), before the containerd stack starts: one `Scope.Members()` of a PID namespace holding N = %d processes (shells blocked opening a FIFO: quicker to create than sleeps) while a sibling PID namespace holds N more (each of those costs a walk up its namespace's parents), on the host's process table as it is; the namespaces are set up once and each scan is timed.\n", b.scan.command, b.cfg.scanN)
	w("- **Grace accuracy** (%d runs, graceful only): a child `sh -c 'trap \"\" TERM; ...'` that ignores TERM, init `trap \"exit 0\" TERM` with a `sleep 0.01` loop, annotations `grace-period=%v` and `stop-order=children-first`; overshoot = the stop report's `drain.duration_ns − drain.grace_ns` (the drain ends when the SIGKILLed child is seen gone).\n", b.cfg.graceReps, graceAccuracy)
	w("- **Idle cost** (%d windows): one container per runtime with `sleep 100000` as init, both idle over the same %v window starting 2 s after their start; context switches are `voluntary_ctxt_switches + nonvoluntary_ctxt_switches` summed over `/proc/SHIM/task/*/status`, CPU time is `utime + stime` of `/proc/SHIM/stat` (10 ms ticks) and, finer, the first field of `/proc/SHIM/task/*/schedstat`; the switches are also sampled every second, to count the seconds in which the shim ran at all (a periodic burst shows as one or two active seconds, a polling loop as every second).\n", b.cfg.reps, b.cfg.idle)

	if b.cfg.profileDir != "" {
		w("\nCPU profiles of the graceful shim's stops were requested in `%s` (`GRACEFUL_CPUPROFILE_DIR`; `go tool pprof FILE`).\n", b.cfg.profileDir)
	}
	w("\n## Details\n")
	if len(b.stops) > 0 {
		w("\n### Stop latency\n\nFor graceful, each stop is split with its report: from the Kill call to the drain's start (the State call, starting the tracer and attaching it, init's own exit on TERM), the drain itself, and from the drain's end to the exit event at the client (releasing init, the kernel's zap of the zombies, reaping, the exit event).\n\n")
		w("| N | runtime | stop latency samples (ms) | Kill → drain start (ms) | drain (ms) | drain end → exit event (ms) | orders (runs) | outcomes per run | pids.max |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
		for _, p := range b.stops {
			for _, rt := range order {
				before, drain, after, orders, outcomes, limit := "—", "—", "—", "—", "—", "—"
				if rt == stack.GracefulRuntime {
					before, drain, after = msList(p.beforeDrain), msList(p.drain), msList(p.afterDrain)
					orders = counts(p.orders)
					var parts []string
					for _, o := range p.outcomes {
						parts = append(parts, counts(o))
					}
					outcomes = strings.Join(parts, "; ")
				}
				if l, ok := p.pidsMax[rt]; ok {
					limit = l
				}
				w("| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.n, short(rt), msList(p.latency[rt]), before, drain, after, orders, outcomes, limit)
			}
		}
	}
	if len(b.graceOvershoot) > 0 {
		st := summarise(b.graceOvershoot)
		k := summarise(b.graceKilledAt)
		w("\n### Grace accuracy (G = %v)\n\n", graceAccuracy)
		w("Overshoot of the drain's end over G, sorted (ms): %s\n\n", msList(st.sorted))
		w("p50 %.2f ms, p90 %.2f ms, max %.2f ms. The TERM-ignoring child was seen gone at G + %s (median %.2f ms).\n",
			st.median/1e6, st.p90/1e6, st.max/1e6, msList(k.sorted), k.median/1e6)
		w("Client-side stop latency − G (ms): %s\n", msList(summarise(b.graceStop).sorted))
	}
	if b.scan.raw != "" {
		w("\n### Membership scan\n\n`%s`:\n\n```\n%s\n```\n", b.scan.command, b.scan.raw)
	}
	if b.rssMany != nil {
		w("\n### Shim RSS\n\n")
		for _, rt := range order {
			w("- %s, 1 container (MiB): %s; %d containers (MiB): %s; shims per run: %v\n", short(rt),
				mibList(b.rssOne[rt]), b.cfg.manyN, mibList(b.rssMany[rt]), b.manyShims[rt])
		}
	}
	if b.idleSwitches != nil {
		w("\n### Idle cost, per window of %v\n\n| runtime | context switches | seconds active | utime+stime (ms) | schedstat CPU (µs) | threads |\n| --- | --- | --- | --- | --- | --- |\n", b.cfg.idle)
		for _, rt := range order {
			w("| %s | %s | %s | %s | %s | %s |\n", short(rt), numList(b.idleSwitches[rt], 1), numList(b.idleActive[rt], 1), numList(b.idleTicks[rt], 1),
				numList(b.idleCPU[rt], 1e3), numList(b.idleThreads[rt], 1))
		}
	}
	return sb.String()
}

func msList(v []float64) string  { return numListF(v, 1e6, 1) }
func mibList(v []float64) string { return numListF(v, 1<<20, 1) }
func numList(v []float64, scale float64) string {
	return numListF(v, scale, 0)
}

func numListF(v []float64, scale float64, digits int) string {
	if len(v) == 0 {
		return "—"
	}
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.*f", digits, x/scale)
	}
	return strings.Join(parts, ", ")
}

// svg plots the stop latency's median (with min–max bars) against N for both shims.
func (b *bench) svg() string {
	const (
		width, height          = 720, 440
		left, right, top, bott = 80, 30, 50, 70
	)
	plotW, plotH := float64(width-left-right), float64(height-top-bott)
	var ns []int
	maxY := 0.0
	for _, p := range b.stops {
		ns = append(ns, p.n)
		for _, rt := range order {
			if st := summarise(p.latency[rt]); st.n > 0 {
				maxY = max(maxY, st.max/1e6)
			}
		}
	}
	logX := len(ns) > 1 && float64(ns[len(ns)-1])/float64(ns[0]) >= 10
	minN, maxN := 0.0, 1.0
	if len(ns) > 0 {
		minN, maxN = float64(ns[0]), float64(ns[len(ns)-1])
		for _, n := range ns {
			minN, maxN = math.Min(minN, float64(n)), math.Max(maxN, float64(n))
		}
	}
	xOf := func(n float64) float64 {
		if minN == maxN {
			return float64(left) + plotW/2
		}
		if logX {
			return float64(left) + plotW*0.05 + plotW*0.9*(math.Log10(n)-math.Log10(minN))/(math.Log10(maxN)-math.Log10(minN))
		}
		return float64(left) + plotW*0.05 + plotW*0.9*(n-minN)/(maxN-minN)
	}
	step := niceStep(maxY / 5)
	if step == 0 {
		step = 1
	}
	topY := math.Ceil(maxY/step) * step
	if topY == 0 {
		topY = step
	}
	yOf := func(ms float64) float64 { return float64(top) + plotH*(1-ms/topY) }
	colors := map[string]string{stack.GracefulRuntime: "#1f77b4", stack.StockRuntime: "#d62728"}

	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w(`<text x="%d" y="24" text-anchor="middle" font-size="15">Stop latency (SIGTERM) with N extra processes: median, min–max bars</text>`+"\n", width/2)
	// Grid and Y axis.
	for y := 0.0; y <= topY+step/2; y += step {
		py := yOf(y)
		w(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, py, width-right, py)
		w(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py+4, trimFloat(y))
	}
	w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, height-bott)
	w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, height-bott, width-right, height-bott)
	for _, n := range ns {
		px := xOf(float64(n))
		w(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>`+"\n", px, height-bott, px, height-bott+5)
		w(`<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", px, height-bott+19, n)
	}
	xLabel := "N, extra processes in the container"
	if logX {
		xLabel += " (log scale)"
	}
	w(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", float64(left)+plotW/2, height-bott+45, xLabel)
	w(`<text transform="translate(22 %.1f) rotate(-90)" text-anchor="middle">stop latency (ms)</text>`+"\n", float64(top)+plotH/2)
	// Series.
	for i, rt := range order {
		color := colors[rt]
		var pts []string
		for _, p := range b.stops {
			st := summarise(p.latency[rt])
			if st.n == 0 {
				continue
			}
			// Shift the two series apart a little so their bars do not overlap.
			px := xOf(float64(p.n)) + float64(2*i-1)*4
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, yOf(st.median/1e6)))
			w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`+"\n", px, yOf(st.min/1e6), px, yOf(st.max/1e6), color)
			for _, v := range []float64{st.min, st.max} {
				w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`+"\n", px-4, yOf(v/1e6), px+4, yOf(v/1e6), color)
			}
			w(`<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s, N=%d: median %.1f ms [%.1f–%.1f]</title></circle>`+"\n",
				px, yOf(st.median/1e6), color, short(rt), p.n, st.median/1e6, st.min/1e6, st.max/1e6)
		}
		if len(pts) > 1 {
			w(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), color)
		}
	}
	// The ratio at each N, above both points.
	for _, p := range b.stops {
		g, st := summarise(p.latency[stack.GracefulRuntime]), summarise(p.latency[stack.StockRuntime])
		if g.n == 0 || st.n == 0 || st.median == 0 {
			continue
		}
		y := math.Min(yOf(g.max/1e6), yOf(st.max/1e6)) - 8
		w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11" fill="#444">×%.2f</text>`+"\n", xOf(float64(p.n)), y, g.median/st.median)
	}
	// Legend.
	lx, ly := left+15, top+10
	w(`<rect x="%d" y="%d" width="250" height="66" fill="white" stroke="#999"/>`+"\n", lx-8, ly-6)
	for i, rt := range order {
		y := ly + 8 + i*20
		w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", lx, y, lx+24, y, colors[rt])
		w(`<circle cx="%d" cy="%d" r="4" fill="%s"/>`+"\n", lx+12, y, colors[rt])
		w(`<text x="%d" y="%d">%s (%s)</text>`+"\n", lx+32, y+4, short(rt), rt)
	}
	w(`<text x="%d" y="%d" font-size="11" fill="#444">×r: graceful median / stock median</text>`+"\n", lx, ly+52)
	if len(b.stops) == 0 {
		w(`<text x="%d" y="%d" text-anchor="middle">no stop latency measured</text>`+"\n", width/2, height/2)
	}
	w("</svg>\n")
	return sb.String()
}

// niceStep rounds a raw axis step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 0
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "-" {
		return "0"
	}
	return s
}

// counts formats a count per key as "k: n, ...", sorted by key.
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
