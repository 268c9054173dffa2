package main

import (
	"fmt"
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
	memoryTarget    = 1.03 // the shim's private dirty memory and summed Pss
	stopTarget      = 1.05
	scanTarget      = 10 * time.Millisecond
	tracerTarget    = 5 * time.Millisecond
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
		ratioRow("shim private dirty memory (Private_Dirty of its writable mappings: what each extra shim costs), 1 idle container", b.dirtyOne, mebibyte, memoryTarget)
		ratioRow("shim RSS, 1 idle container", b.rssOne, mebibyte, rssTarget)
	}
	if b.rssMany != nil {
		ratioRow(fmt.Sprintf("shim private dirty memory summed over %d idle containers (one shim each)", b.cfg.manyN), b.dirtyMany, mebibyte, memoryTarget)
		ratioRow(fmt.Sprintf("shim Pss summed over %d idle containers (the binary's shared pages split between the shims)", b.cfg.manyN), b.pssMany, mebibyte, memoryTarget)
		ratioRow(fmt.Sprintf("shim RSS summed over %d idle containers (one shim each)", b.cfg.manyN), b.rssMany, mebibyte, rssTarget)
	}
	for _, p := range b.stops {
		ratioRow(fmt.Sprintf("stop latency, N = %d extra processes (SIGTERM)", p.n), p.latency, millis, stopTarget)
		cell, met := termedCell(p)
		rows = append(rows, row{fmt.Sprintf("… N = %d: processes that exited after SIGTERM (stop report)", p.n), cell,
			"0 (SIGKILLed by the kernel's zap)", "—", "all N", met})
		infoRow(fmt.Sprintf("… N = %d: shim CPU time per stop (schedstat, its threads; Kill → exit event)", p.n), p.cpu, millis)
	}
	if p := b.emulatedStopPoint; p != nil {
		ratioRow(fmt.Sprintf("stop latency, N = %d, as on Linux %s (graceful: a kernelemu build without the newer kernels' calls; its own stack, same run)", p.n, p.emulated), p.latency, millis, stopTarget)
		cell, met := termedCell(p)
		rows = append(rows, row{fmt.Sprintf("… N = %d as on Linux %s: processes that exited after SIGTERM (stop report)", p.n, p.emulated), cell,
			"0 (SIGKILLed by the kernel's zap)", "—", "all N", met})
		infoRow(fmt.Sprintf("… N = %d as on Linux %s: shim CPU time per stop (schedstat, its threads; Kill → exit event)", p.n, p.emulated), p.cpu, millis)
	}
	rows = append(rows, b.hostRows()...)
	var tracer []float64
	for _, p := range b.stops {
		tracer = append(tracer, p.tracer...)
	}
	for _, p := range b.hostPoints {
		tracer = append(tracer, p.tracer...)
	}
	if len(tracer) > 0 {
		st := summarise(tracer)
		rows = append(rows, row{fmt.Sprintf("tracer start (init-first): started until it traced init, from the stop report (%d stops)", st.n),
			micro(st), "— (no tracer)", "—", fmt.Sprintf("≤ %v", tracerTarget), yesNo(st.median <= float64(tracerTarget))})
	}
	if b.scan.raw != "" {
		st, full, list := b.scan.st, b.scan.full, b.scan.list
		rows = append(rows, row{fmt.Sprintf("membership of a drain that signals at once (the default for a container with its own PID namespace): one read of the container's cgroup.procs, unconfirmed, since the signaller's `kill(-1)` from inside the namespace reaches exactly the members; %d members + %d in a sibling PID namespace, %d calls", b.cfg.scanN, b.cfg.scanN, list.n),
			millis.cell(list), "— (no scan)", "—", fmt.Sprintf("≤ %v", scanTarget), yesNo(list.median <= float64(scanTarget))})
		rows = append(rows, row{fmt.Sprintf("… membership confirmed process by process (one `Scope.Members()`: its cgroup, init's and the caller's children, each checked; a drain member by member: a shared PID namespace, or the signaller failed), same host, %d calls", st.n),
			millis.cell(st), "— (no scan)", "—", fmt.Sprintf("≤ %v", scanTarget), yesNo(st.median <= float64(scanTarget))})
		rows = append(rows, row{fmt.Sprintf("… the full pass over /proc (one `Scope.AllMembers()`, run aside, off the stop's critical path), same host, %d calls", full.n),
			millis.cell(full), "— (no scan)", "—", "—", "—"})
	}
	if e := b.emulatedScan; e.raw != "" {
		rows = append(rows, row{fmt.Sprintf("… as on Linux %s (a kernelemu build: each candidate's PID namespace looked up in /proc/PID/ns, not asked of the namespace or the pidfd by ioctl): the cgroup list, %d calls", b.cfg.emulate, e.list.n),
			millis.cell(e.list), "— (no scan)", "—", fmt.Sprintf("≤ %v", scanTarget), yesNo(e.list.median <= float64(scanTarget))})
		rows = append(rows, row{fmt.Sprintf("… as on Linux %s: membership confirmed process by process (`Scope.Members()`), %d calls", b.cfg.emulate, e.st.n),
			millis.cell(e.st), "— (no scan)", "—", fmt.Sprintf("≤ %v", scanTarget), yesNo(e.st.median <= float64(scanTarget))})
		rows = append(rows, row{fmt.Sprintf("… as on Linux %s: the full pass over /proc (`Scope.AllMembers()`), %d calls", b.cfg.emulate, e.full.n),
			millis.cell(e.full), "— (no scan)", "—", "—", "—"})
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

// termedCell is the cell and the met? of the processes that graceful TERMed at the points (all of
// the same N): "N/N in every run" when every stop's report TERMed all N.
func termedCell(points ...*stopPoint) (cell, met string) {
	n, runs, stops := 0, 0, 0
	minTermed := -1
	for _, p := range points {
		n = p.n
		for _, t := range p.termed {
			if minTermed < 0 || t < minTermed {
				minTermed = t
			}
		}
		runs += len(p.termed)
		stops += len(p.latency[stack.GracefulRuntime])
	}
	if runs == 0 {
		return "—", "—"
	}
	cell = fmt.Sprintf("%d/%d in every run", minTermed, n)
	if minTermed < n {
		cell = fmt.Sprintf("as few as %d/%d", minTermed, n)
	}
	return cell, yesNo(minTermed == n && runs == stops)
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

// write writes benchmarks.md, stop-latency.svg and host-size.svg into the output directory.
func (b *bench) write(rows []row) error {
	if err := os.MkdirAll(b.cfg.out, 0o755); err != nil {
		return err
	}
	if err := b.saveStopPlot(filepath.Join(b.cfg.out, "stop-latency.svg")); err != nil {
		return err
	}
	if err := b.saveHostPlot(filepath.Join(b.cfg.out, "host-size.svg")); err != nil {
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
	if len(b.hostPoints) > 0 {
		w("\n![Stop latency of a %d-process container against the number of idle host processes, both shims](host-size.svg)\n", hostSweepN)
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
	w("- **Shim memory**: `VmRSS` of the shim, `Private_Dirty` of its writable mappings (its own pages: the stack's shim binary lies on tmpfs, whose read-only pages would show as private dirty while one process maps them) and `Pss` from `/proc/PID/smaps`, found as the parent (`PPid`) of the container's init, 0.5 s after the start (1 container, same samples as the start latency) or 1 s after %d containers started, summed over their distinct shims (%d repetitions per runtime).\n", b.cfg.manyN, b.cfg.reps)
	w("- **Stop latency** (%d repetitions per N and runtime, more than elsewhere: a stop's time moves by 10–15 %% from run to run): init is `trap \"exit 0\" TERM`, then two background spawners `(for i in $(seq N/2-1); do sleep 1000 & done; exec sleep 1000) &` (so exactly N sleeps, created twice as fast), `echo ready; wait`; once all N sleeps are in the container's PID namespace (counted through `/proc/PID/ns/pid`), SIGTERM to the task (`Task.Kill`) until its exit event. Graceful's default order (`auto`) is init-first here, since init traps TERM: init exits and is held while the N sleeps get SIGTERM all at once, from graceful's signaller inside the container's PID namespace (`kill(-1)`), and are followed through the container's task count (`pids.current`) and `cgroup.procs` until they are gone, releasing themselves as they die (init, held, was made to ignore SIGCHLD on its way to its exit: autoreap); then init is released; the stock shim's init exits and the kernel SIGKILLs the N sleeps, which reap themselves as they die (the zap sets init's SIGCHLD to ignored first). The processes TERMed are counted from the graceful shim's stop report (topic `/graceful/stop`): outcome `exited` with `SIGTERM` among its signals (a report that details only its first processes gives totals by outcome: there, the `exited` total, less any detailed `exited` process without `SIGTERM`). The shim CPU time per stop is the first field of `/proc/SHIM/task/*/schedstat` (time on CPU, ns), summed over the shim's threads, read before the Kill and after the exit event (graceful's tracer and signaller, processes of their own, are not counted).\n", b.cfg.stopReps)
	if p := b.emulatedStopPoint; p != nil {
		w("- **As on Linux %[1]s** (the stop at N = %[2]d, and membership): the same measurements with the graceful shim, graceful-hold and the benchmark built with the `kernelemu` tag and `GRACEFUL_EMULATE_KERNEL=%[1]s`, so that every call newer than that kernel fails as it would there and the fallback runs (see the README's Kernels section and docs/benchmark-notes.md); the stop in a second private containerd, started after the first one has gone, graceful and stock taking turns as above, and checked in containerd's log to have behaved as %[1]s.\n", p.emulated, p.n)
	}
	if len(b.hostPoints) > 0 {
		sb.WriteString(b.hostMeasured())
	}
	w("- **Membership** (`process.BenchmarkMembers`, `%s`), before the containerd stack starts: a container's PID namespace holding N = %d processes (shells blocked opening a FIFO: quicker to create than sleeps), in a cgroup of its own as a container's is (under `/sys/fs/cgroup/pids`, or `/sys/fs/cgroup` on cgroup v2), while a sibling PID namespace in the caller's cgroup holds N more, on the host's process table as it is; the namespaces are set up once. Each iteration times one `Scope.Members()`, what a drain signalling member by member signals first: the candidates from the container itself (its cgroup's `cgroup.procs` and those of its sub-cgroups, init's children, the caller's children), each confirmed in the namespace, at a cost that grows with the container (this is `ns/op`); then, outside `ns/op`, the cgroup list, what a drain that signals the namespace at once follows (the same `cgroup.procs` read in one pass, unconfirmed: the kernel's `kill(-1)` from the signaller inside the namespace reaches exactly the members, and a listed process still there when the list stops shrinking is confirmed then), and one `Scope.AllMembers()`, the full pass over `/proc` that a drain runs once aside, off its critical path, for a process that entered by setns (it looks at every process of the host, and each of the sibling's costs a walk up its namespace's parents). `Members()` and `AllMembers()` must find exactly the N members; the cgroup list must hold them, and nothing else but `unshare`, which joined the cgroup before it made the namespace (no member: never reached by `kill(-1)`).\n", b.scan.command, b.cfg.scanN)
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
	sb.WriteString(b.hostDetails())
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
		w("\n### Membership\n\n`%s` (`median-ns`, `min-ns`, `max-ns`: `Members()`; `fullpass-*`: `AllMembers()`; `list-*`: the cgroup list):\n\n```\n%s\n```\n", b.scan.command, b.scan.raw)
		if e := b.emulatedScan; e.raw != "" {
			w("\nAs on Linux %s, `%s`:\n\n```\n%s\n```\n", b.cfg.emulate, e.command, e.raw)
		}
	}
	if b.rssMany != nil {
		w("\n### Shim RSS\n\n")
		for _, rt := range order {
			w("- %s, 1 container (MiB): RSS %s, Private_Dirty %s; %d containers (MiB): RSS %s, Private_Dirty %s, Pss %s; shims per run: %v\n", short(rt),
				mibList(b.rssOne[rt]), mibList(b.dirtyOne[rt]), b.cfg.manyN, mibList(b.rssMany[rt]), mibList(b.dirtyMany[rt]), mibList(b.pssMany[rt]), b.manyShims[rt])
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
