package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// 3b. The host-size sweep: the stop of a small container (stopScript(hostSweepN)) while the host
// holds 0, 5 000, 20 000 more idle processes, outside any container. A drain finds the container's
// processes from the container itself, so graceful's stop time should not grow with the host.

const (
	// hostSweepN is the container's size in the sweep: init and 10 sleeps that die on TERM.
	hostSweepN = 10
	// hostFlatTarget bounds graceful's median stop time at the largest host size over its median
	// at the smallest.
	hostFlatTarget = 1.10
	// pidMargin is kept free of kernel.pid_max besides the idle processes: the stack, the
	// containers and whatever else starts meanwhile.
	pidMargin = 2000
)

// hostPoint is the sweep at one host size.
type hostPoint struct {
	*stopPoint // stops of a hostSweepN container, with stopPoint.hosts idle host processes
	// total is the number of processes on the host (all of /proc) once the idle ones were there;
	// spawn and reap how long starting them all and ending them all took.
	total       int
	spawn, reap time.Duration
}

// hostSizeSweep runs the sweep: for each size, start the idle processes and wait until all are
// there, stop containers of both runtimes as the stop section does, then end and reap them all.
func (b *bench) hostSizeSweep(ctx context.Context) error {
	b.hostPoints = nil
	largest := 0
	for _, h := range b.cfg.hostSizes {
		largest = max(largest, h)
	}
	if err := pidRoom(largest); err != nil {
		return err
	}
	for _, h := range b.cfg.hostSizes {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := &hostPoint{stopPoint: newStopPoint(hostSweepN)}
		p.sweep, p.hosts = true, h
		if err := pidRoom(h); err != nil {
			return err
		}
		t := time.Now()
		idle, err := startIdle(ctx, h)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name(), err)
		}
		p.spawn = time.Since(t)
		p.total = hostProcesses()
		b.hostPoints = append(b.hostPoints, p)
		if h > 0 {
			logf("%s: %d idle host processes started in %v; %d processes on the host", p.name(), h, p.spawn.Round(time.Millisecond), p.total)
		}
		err = b.stopReps(ctx, p.stopPoint)
		t = time.Now()
		if serr := idle.stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("%s: %w", p.name(), serr))
		}
		p.reap = time.Since(t)
		if h > 0 {
			logf("%s: the idle host processes ended and were reaped in %v", p.name(), p.reap.Round(time.Millisecond))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// pidRoom fails unless n more processes fit under kernel.pid_max (and threads-max), besides the
// tasks running now and a margin.
func pidRoom(n int) error {
	if n == 0 {
		return nil
	}
	tasks, err := process.HostTasks()
	if err != nil {
		return err
	}
	for _, lim := range []string{"pid_max", "threads-max"} {
		data, err := os.ReadFile("/proc/sys/kernel/" + lim)
		if err != nil {
			return err
		}
		max, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			return fmt.Errorf("kernel.%s: %q", lim, data)
		}
		if need := tasks + n + pidMargin; need > max {
			return fmt.Errorf("%d idle host processes do not fit: kernel.%s is %d, %d tasks run already, and %d more plus a margin of %d need %d (raise kernel.%s, or pass smaller -host-sizes)",
				n, lim, max, tasks, n, pidMargin, need, lim)
		}
	}
	if limit, cgroup, err := pidsLimit(os.Getpid()); err == nil {
		if v, err := strconv.Atoi(limit); err == nil && v < n+pidMargin {
			return fmt.Errorf("%d idle host processes do not fit in the bench's pids cgroup %s: pids.max %d (on the way up)", n, cgroup, v)
		}
	}
	return nil
}

// hostProcesses counts the processes of /proc.
func hostProcesses() int {
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if name := e.Name(); name[0] >= '0' && name[0] <= '9' {
			n++
		}
	}
	return n
}

// idleHost is a tree of idle processes on the host, in the bench's own PID namespace and cgroups,
// outside any container: shells blocked opening a FIFO that nobody writes to. They are forked
// without an exec, which on small machines is several times quicker than starting sleeps (see
// process.blockers). The tree is a top shell and its spawner shells; each of them ends blocked
// opening the FIFO too, and then waits for its children, so when the FIFO is opened for writing
// once (and closed), every shell of the tree returns from its read at EOF and is reaped by its
// own parent, the top shell last by the bench.
type idleHost struct {
	n    int
	cmd  *exec.Cmd
	dir  string // temporary directory of the FIFO
	fifo string
	done chan struct{} // closed when cmd.Wait returned
}

// perSpawner bounds the processes one spawner shell forks: dash keeps every background job in a
// table that it searches at each fork, so a spawner's forks get slower with the jobs it has
// (20 000 processes from two spawners took 19 s here, 5 000 under 1 s).
const perSpawner = 2500

// idleScript is the top shell's script ($1 is the FIFO) for n processes in all, the top shell
// included: at least two spawners, and one per perSpawner processes.
func idleScript(n int) string {
	spawners := min(n-1, max(2, (n-1+perSpawner)/(perSpawner+1)))
	readers := n - 1 - spawners
	var sb strings.Builder
	for i := 0; i < spawners; i++ {
		k := readers / spawners
		if i < readers%spawners {
			k++
		}
		fmt.Fprintf(&sb, "(for i in $(seq %d); do read x < \"$1\" & done; read x < \"$1\"; wait) &\n", k)
	}
	sb.WriteString("read x < \"$1\"; wait\n")
	return sb.String()
}

// startIdle starts n idle processes (none for 0) and returns once all of them exist and are
// asleep, or fails after a deadline.
func startIdle(ctx context.Context, n int) (*idleHost, error) {
	h := &idleHost{n: n}
	if n == 0 {
		return h, nil
	}
	dir, err := os.MkdirTemp("", "graceful-bench-idle-")
	if err != nil {
		return nil, err
	}
	h.dir, h.fifo = dir, filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(h.fifo, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	h.cmd = exec.Command("sh", "-c", idleScript(n), "sh", h.fifo)
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	h.cmd.Stderr = os.Stderr
	if err := h.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	h.done = make(chan struct{})
	go func() {
		h.cmd.Wait()
		close(h.done)
	}()
	started := time.Now()
	deadline := started.Add(60*time.Second + time.Duration(n)*5*time.Millisecond)
	for {
		got, asleep := h.count()
		if got == n && asleep {
			return h, nil
		}
		err := ctx.Err()
		if err == nil && time.Now().After(deadline) {
			err = fmt.Errorf("%d of %d idle host processes there (all asleep: %v) after %v", got, n, asleep, time.Since(started).Round(time.Second))
		}
		select {
		case <-h.done:
			err = fmt.Errorf("the idle host processes' shell ended (%v) with %d of %d there", h.cmd.ProcessState, got, n)
		default:
		}
		if err != nil {
			if serr := h.stop(); serr != nil {
				err = errors.Join(err, serr)
			}
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// count returns the number of processes in the tree (the top shell and its descendants, through
// /proc/PID/task/PID/children) and, once that is n, whether every one of them is asleep (state S:
// forked shells still on their way to the FIFO's open are running).
func (h *idleHost) count() (int, bool) {
	tree := []int{h.cmd.Process.Pid}
	for i := 0; i < len(tree) && len(tree) <= h.n; i++ {
		pid := strconv.Itoa(tree[i])
		data, err := os.ReadFile("/proc/" + pid + "/task/" + pid + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				tree = append(tree, c)
			}
		}
	}
	if len(tree) != h.n {
		return len(tree), false
	}
	for _, pid := range tree {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		i := bytes.LastIndexByte(stat, ')')
		if err != nil || i < 0 || i+2 >= len(stat) || stat[i+2] != 'S' {
			return len(tree), false
		}
	}
	return len(tree), true
}

// stop ends the idle processes: it opens the FIFO for writing and closes it again, every 100 ms
// (a shell that reaches the FIFO's open late is released by the next round), until the top shell
// has exited; each shell is reaped by its parent. After 60 s the tree's process group is
// SIGKILLed. Either way it fails if any process of the tree is left.
func (h *idleHost) stop() error {
	if h.cmd == nil {
		return nil
	}
	defer os.RemoveAll(h.dir)
	var err error
	deadline := time.Now().Add(60 * time.Second)
release:
	for {
		// ENXIO: no reader has the FIFO open or is opening it at the moment.
		if fd, oerr := unix.Open(h.fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); oerr == nil {
			unix.Close(fd)
		}
		select {
		case <-h.done:
			break release
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("the idle host processes did not all end within 60 s of the FIFO's release: SIGKILLed their process group")
			syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
			<-h.done
			break
		}
	}
	// Anything of the tree still there (an orphan reparented away) is in its process group and
	// runs the top shell's command line, which names the FIFO.
	if left := h.left(); len(left) > 0 {
		syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		err = errors.Join(err, fmt.Errorf("%d idle host processes left after their shell ended (SIGKILLed), e.g. %v", len(left), left[:min(len(left), 10)]))
	}
	return err
}

// left lists the processes of the tree's process group whose command line names the FIFO.
func (h *idleHost) left() []int {
	var pids []int
	pgid := h.cmd.Process.Pid
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		if cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(cmdline, []byte(h.fifo)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// hostRows are the sweep's rows of the results table.
func (b *bench) hostRows() []row {
	if len(b.hostPoints) == 0 {
		return nil
	}
	var rows []row
	for _, p := range b.hostPoints {
		g, st := p.latency.g(), p.latency.s()
		_, r := ratioOf(g, st)
		rows = append(rows, row{fmt.Sprintf("host-size sweep: stop latency, N = %d, with %d idle host processes (%d on the host)", p.n, p.hosts, p.total),
			millis.cell(g), millis.cell(st), r, "—", "—"})
		g, st = p.cpu.g(), p.cpu.s()
		_, r = ratioOf(g, st)
		rows = append(rows, row{fmt.Sprintf("… %d idle host processes: shim CPU time per stop (schedstat, its threads; Kill → exit event)", p.hosts),
			millis.cell(g), millis.cell(st), r, "—", "—"})
	}
	var termed []*stopPoint
	for _, p := range b.hostPoints {
		termed = append(termed, p.stopPoint)
	}
	cell, met := termedCell(termed...)
	rows = append(rows, row{"… processes that exited after SIGTERM (stop report), at every host size", cell,
		"0 (SIGKILLed by the kernel's zap)", "—", "all N", met})
	lo, hi := b.hostPoints[0], b.hostPoints[0]
	for _, p := range b.hostPoints {
		if p.hosts < lo.hosts {
			lo = p
		}
		if p.hosts > hi.hosts {
			hi = p
		}
	}
	if lo == hi {
		return rows
	}
	flat := func(rt string) (float64, string) {
		a, z := summarise(lo.latency[rt]), summarise(hi.latency[rt])
		if a.n == 0 || z.n == 0 || a.median == 0 {
			return 0, "—"
		}
		r := z.median / a.median
		return r, fmt.Sprintf("%.3f (%s / %s)", r, millis.format(z.median), millis.format(a.median))
	}
	gr, gcell := flat(stack.GracefulRuntime)
	_, scell := flat(stack.StockRuntime)
	met = "—"
	if gcell != "—" {
		met = yesNo(gr <= hostFlatTarget)
	}
	rows = append(rows, row{fmt.Sprintf("host-size sweep: stop time flat, median at %d idle host processes / median at %d", hi.hosts, lo.hosts),
		gcell, scell, "—", fmt.Sprintf("graceful ≤ %.2f", hostFlatTarget), met})
	return rows
}

// hostMeasured is the sweep's part of "How each figure is measured".
func (b *bench) hostMeasured() string {
	return fmt.Sprintf("- **Host-size sweep** (%d repetitions per host size and runtime, host sizes %v): the stop latency's container with N = %d (`trap \"exit 0\" TERM` and N sleeps, measured exactly as the stop latency: the same alternation, the same wait for all N, `Task.Kill` until the exit event, the same count of the processes TERMed from graceful's stop report, the same shim CPU time) while the host holds that many more idle processes, started by the bench outside any container, in its own PID namespace and cgroups: a top shell and spawner shells (two, or one per %d processes: dash searches its job table at each fork) forking `read x < FIFO &` (shells blocked opening a FIFO nobody writes to, quicker to create than sleeps), each ending blocked on the FIFO too; the bench counts them through `/proc/PID/task/PID/children` until all of them exist and are asleep (no fixed wait), and after the size's stops opens the FIFO for writing and closes it, so that every shell returns from its read and is reaped by its parent, and checks that none is left (the sizes must fit under `kernel.pid_max` = %s with a margin of %d, checked first). A drain finds the container's processes from the container itself (its cgroup, init's and the shim's children) and runs its one full `/proc` pass aside, so graceful's stop time should not grow with the host: the target is its median at the largest size over its median at the smallest, ≤ %.2f. The stock shim's stop (init exits, the kernel's zap) never looks at other processes; its row is for comparison.\n",
		b.cfg.stopReps, b.cfg.hostSizes, hostSweepN, perSpawner, b.machine.pidMax, pidMargin, hostFlatTarget)
}

// hostDetails is the sweep's section of the details: every sample, the split of graceful's stops,
// and how long the idle processes took to start and to end.
func (b *bench) hostDetails() string {
	if len(b.hostPoints) == 0 {
		return ""
	}
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("\n### Host-size sweep\n\nN = %d; graceful's stops split with the report as in the stop latency's details.\n\n", hostSweepN)
	w("| idle host processes | on the host | started in (s) | ended and reaped in (s) | runtime | stop latency samples (ms) | shim CPU per stop (ms) | Kill → drain start (ms) | drain (ms) | drain end → exit event (ms) | orders (runs) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, p := range b.hostPoints {
		for _, rt := range order {
			before, drain, after, orders := "—", "—", "—", "—"
			if rt == stack.GracefulRuntime {
				before, drain, after, orders = msList(p.beforeDrain), msList(p.drain), msList(p.afterDrain), counts(p.orders)
			}
			w("| %d | %d | %.1f | %.1f | %s | %s | %s | %s | %s | %s | %s |\n", p.hosts, p.total, p.spawn.Seconds(), p.reap.Seconds(), short(rt),
				msList(p.latency[rt]), msList(p.cpu[rt]), before, drain, after, orders)
		}
	}
	return sb.String()
}
