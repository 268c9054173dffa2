package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// DrainConfig is how to drain a container's processes.
type DrainConfig struct {
	// Signal is sent to every member (followed by SIGCONT, so a stopped process can act on it).
	Signal unix.Signal
	// KillWait bounds the wait for SIGKILLed members to disappear. A process in uninterruptible
	// sleep may outlive it; it is reported as survived.
	KillWait time.Duration
	// KillSweeps bounds the SIGKILL sweeps at the grace period's end, which a fork bomb would
	// otherwise refill forever (at least one is made).
	KillSweeps int
	// Signaller, when set for a container in a PID namespace of its own, signals every member at
	// once from inside the namespace (see bulk.go); else each member is signalled through its
	// pidfd.
	Signaller Signaller
	// StopSignal, when set and not Signal, goes instead of Signal to each member that handles it
	// (Catches: nginx and php-fpm quit gracefully only on their image's SIGQUIT), while the rest
	// get Signal (SIGQUIT would dump a shell's core). No member gets both. It needs a signal
	// chosen member by member, so a drain with it never signals at once.
	StopSignal unix.Signal
	// Begun, when set, is a fork watch made before init was given the stop signal (an init-first
	// stop), with MarkNow called just before the signal; the drain takes it over. A process
	// created within LateWindow of that mark
	// is taken for a handler's work (tini -g and dumb-init pass the signal on to their child's
	// whole process group, whose handlers may fork): it is waited for, and never sent the drain
	// signal, only the SIGKILL at the grace period's end. A drain that signals at once cannot
	// spare them: kill(-1) reaches every member.
	Begun *ForkWatch
}

// chooses reports whether the drain picks each member's signal: it has a StopSignal apart from
// its Signal.
func (c DrainConfig) chooses() bool {
	return c.StopSignal != 0 && c.StopSignal != c.Signal
}

// Outcome is how one process ended during a drain.
type Outcome string

const (
	// AlreadyExited: the process had exited (a zombie) before it could be signalled.
	AlreadyExited Outcome = "already-exited"
	// ExitedAfterSignal: the process exited within the grace period after the drain signal.
	ExitedAfterSignal Outcome = "exited"
	// ExitedUnsignalled: the process was started during the grace period (by a cleanup handler,
	// say), so it got no signal, and exited by itself within the grace period.
	ExitedUnsignalled Outcome = "exited-unsignalled"
	// Killed: the process was still there when the grace period ended and was SIGKILLed.
	Killed Outcome = "killed"
	// Survived: the process outlived even the SIGKILL wait (uninterruptible sleep).
	Survived Outcome = "survived"
	// Aborted: the drain was cancelled (the container was SIGKILLed) while the process ran.
	Aborted Outcome = "aborted"
)

// ProcessReport is what happened to one process during a drain.
type ProcessReport struct {
	Pid     int           `json:"pid"`
	Command string        `json:"command"`
	Signals []string      `json:"signals"`
	Outcome Outcome       `json:"outcome"`
	After   time.Duration `json:"after_ns"` // since the drain started
}

// Report is the result of one drain.
type Report struct {
	Scope  ScopeKind `json:"scope"`
	Signal string    `json:"signal"`
	// StopSignal is the container's stop signal, sent instead of Signal to the members that
	// handle it (DrainConfig.StopSignal); each process's Signals say which one it got.
	StopSignal   string        `json:"stop_signal,omitempty"`
	Grace        time.Duration `json:"grace_ns"`
	Started      time.Time     `json:"started"`
	Duration     time.Duration `json:"duration_ns"`
	GraceExpired bool          `json:"grace_expired"`
	Cancelled    bool          `json:"cancelled"`
	// Totals counts every process by outcome; Processes details the first MaxDetailed of them and
	// Omitted says how many more there were.
	Totals    map[Outcome]int `json:"totals"`
	Processes []ProcessReport `json:"processes"`
	Omitted   int             `json:"omitted,omitempty"`
	// HostScanDone says whether the full pass over /proc (see Drainer) finished before the drain
	// ended, and HostScanFound how many members only it found.
	HostScanDone  bool `json:"host_scan_done"`
	HostScanFound int  `json:"host_scan_found,omitempty"`
	// Bulk is how many members listed from the container's cgroup got the drain signal at once,
	// from inside the PID namespace (see DrainConfig.Signaller).
	Bulk  int      `json:"bulk,omitempty"`
	Notes []string `json:"notes,omitempty"`
}

// MaxDetailed bounds the processes a report details (and whose command line it reads, which costs
// two system calls each): a container with thousands of processes gets totals for all of them.
const MaxDetailed = 256

// Count returns how many processes ended with outcome o.
func (r *Report) Count(o Outcome) int {
	if r.Totals != nil {
		return r.Totals[o]
	}
	n := 0
	for _, p := range r.Processes {
		if p.Outcome == o {
			n++
		}
	}
	return n
}

// Without a fork watcher, the process table is re-read to find processes started during the
// drain: soon after any exit (no more often than rescanMin) and, while nothing exits, at an
// interval backing off to rescanMax. With the watcher it is re-read only to confirm the end.
const (
	rescanMin = 10 * time.Millisecond
	rescanMax = 250 * time.Millisecond
)

type tracked struct {
	h      *Handle
	detail int // index in Report.Processes, -1 when the process is only counted
	killed bool
	// signalled: the drain signal (or SIGKILL) was delivered; outcome, when set, overrides the
	// outcome found at exit.
	signalled bool
	outcome   Outcome
	// sigAt is CLOCK_MONOTONIC just before the drain signal was sent (0: not signalled): a fork
	// reported with an earlier timestamp predates the signal, so the child needs it too.
	sigAt int64
	// nsIno is the process's PID namespace. deferred marks a nested namespace's init that would
	// drop the drain signal: it is SIGKILLed once the rest of its namespace has exited.
	// deferredOwn marks a process such an init (or its own new processes) started during the drain.
	nsIno       uint64
	deferred    bool
	deferredOwn bool
}

// finishedPid is a process seen exiting: its PID may still be a zombie, or be recycled.
type finishedPid struct {
	gen   uint32 // the prune generation in which the PID was last listed in /proc
	sigAt int64  // as tracked.sigAt
}

// pruneMin is the fewest finished entries that trigger pruning between sweeps.
const pruneMin = 1024

// Drainer is a drain in progress: Start has signalled the members found so far, Finish waits
// for them.
type Drainer struct {
	scope    *Scope
	cfg      DrainConfig
	grace    time.Duration // from Start
	report   *Report
	watch    *forkWatcher  // nil when the proc connector is not available
	ep       int           // epoll instance watching the active pidfds, the fork watcher and wake
	byFd     map[int32]int // active pidfd → pid
	events   []unix.EpollEvent
	phaseSig unix.Signal // what a process started now gets: 0 during the grace, SIGKILL after
	active   map[int]*tracked
	finished map[int]finishedPid
	// gen counts prunes of finished; pruneAt is the size of finished that triggers the next.
	gen     uint32
	pruneAt int
	// deferred counts the active nested inits waiting for their namespace to empty.
	deferred int
	commands *commandReader
	// initsOwn are processes started by init (or by such processes) after the drain began: init's
	// own business, as init has not been asked to stop yet. They are not waited for.
	initsOwn map[int]bool
	// scan is the full pass over /proc, run aside once the members found from the container
	// itself have been signalled; nil once its result has been taken.
	scan *hostScan
	// startTicks is the drain's start in clock ticks after boot, as /proc/PID/stat's start time.
	startTicks uint64
	// begun is when the stop began (DrainConfig.Begun; 0: not known); late are the processes
	// created within LateWindow of then, before the drain started: never sent the drain signal.
	begun    int64
	late     map[int]bool
	lateLost bool // creations were lost to readLate (noted once)
	spared   int  // members left unsignalled for it
	// pendingForks are creations readLate read from the watch, for forked at the next wait, and
	// pendingLost says that creations were lost then (for wait to report).
	pendingForks []fork
	pendingLost  bool

	// The bulk drain (bulk.go): helper is the signaller's PID; bulk the members followed through
	// cgroup.procs; bulkWin when they were signalled; bulkPolled the last poll, bulkGen the count
	// of reads of the list and bulkBuf its buffer. bulkCount is the container's task count
	// (pids.current) at the last poll and bulkBase the tasks that were no bulk member at the last
	// read of the list (see listDue).
	helper     int
	bulk       map[int]*bulkMember
	bulkWin    SignalWindow
	bulkPolled time.Time
	bulkGen    uint32
	bulkBuf    []int
	bulkCount  int
	bulkBase   int
	// bulkHandles counts the detailed bulk members' open pidfds and bulkHandlePids lists them
	// (with some ended since, dropped at the next poll); bulkEnded counts those seen ended through
	// them since the last read of the list; bulkPollFds is poll's buffer.
	bulkHandles    int
	bulkHandlePids []int
	bulkEnded      int
	bulkPollFds    []unix.PollFd
	// unopened are members that could not be opened other than for their end (too many open
	// files), with the signal each is owed: waited for, and opened again at each wake-up.
	unopened map[int]unix.Signal
	// listFailed: a read of the list failed other than for a gone cgroup (noted once);
	// openFailed: a member could not be opened other than for its end (noted once).
	listFailed bool
	openFailed bool
}

// Drain signals every member of scope except its init with cfg.Signal, waits on pidfd readiness
// until none remains or the grace period ends, then SIGKILLs the rest. It is PrepareDrain, Start
// and Finish in one.
//
// The members are found from the container itself first (Scope.candidates), at a cost that grows
// with the container, not with the host, and signalled at once. A full pass over /proc then runs
// aside, for a member that only it finds (one that entered the PID namespace by setns from outside
// the container's cgroup): it is signalled as soon as the pass finds it. The drain does not wait
// for the pass: when every other member is gone first, the report says the pass did not finish,
// and what it had not reached is left to the kernel's SIGKILL, as under the stock shim.
func Drain(ctx context.Context, scope *Scope, cfg DrainConfig, grace time.Duration) *Report {
	return PrepareDrain(scope, cfg).Start(grace).Finish(ctx)
}

// PrepareDrain readies a drain of scope without signalling anything yet: it starts watching forks
// and, for a bulk drain (see bulk.go), lists the members and starts reading the commands of the
// first of them, so that Start has little left to do. A prepared drain that is not started must
// be closed (Close).
func PrepareDrain(scope *Scope, cfg DrainConfig) *Drainer {
	cfg.KillSweeps = max(cfg.KillSweeps, 1)
	d := &Drainer{
		scope:    scope,
		cfg:      cfg,
		active:   map[int]*tracked{},
		finished: map[int]finishedPid{},
		pruneAt:  pruneMin,
		initsOwn: map[int]bool{},
		unopened: map[int]unix.Signal{},
		byFd:     map[int32]int{},
		commands: newCommandReader(),
		report: &Report{
			Scope:  scope.Kind,
			Signal: SignalName(cfg.Signal),
			Totals: map[Outcome]int{},
		},
	}
	// Exits are waited for with epoll: one wake-up costs what is ready, not what is tracked.
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		ep = -1 // poll(2) over every tracked pidfd instead
	}
	d.ep = ep
	// Watch forks before the first sweep, so that no process started from now on is missed.
	if cfg.Begun != nil {
		d.watch, d.begun = cfg.Begun.w, cfg.Begun.from
		d.cfg.Begun = nil // taken over: closed with the drain
	} else {
		d.watch, _ = newForkWatcher()
	}
	if d.watch != nil {
		d.watchFd(d.watch.fd)
	}
	d.late = map[int]bool{}
	d.prepareBulk()
	return d
}

// Start sends the drain signal to every current member of the scope except its init and returns
// at once; the grace period, of length grace, starts now. It never signals a process that is not
// a member (see Scope.OpenMember; a bulk drain signals from inside the container's namespace).
func (d *Drainer) Start(grace time.Duration) *Drainer {
	d.grace = grace
	d.report.Grace = grace
	d.report.Started = time.Now()
	d.startTicks = bootTicks()
	if d.cfg.chooses() {
		d.report.StopSignal = SignalName(d.cfg.StopSignal)
	}
	if beforeFirstSweep != nil {
		beforeFirstSweep()
	}
	if d.signalBulk(d.cfg.Signal) {
		// kill(-1) reached every member, a handler's new processes too: signalling thousands
		// at once is worth more than sparing them (ordinary forks in a large container would
		// otherwise always make the drain go member by member).
		d.begun = 0
	} else {
		d.sweep(d.cfg.Signal)
	}
	d.startScan()
	return d
}

// LateWindow is how long after init was given the stop signal a new process is taken for a
// handler's work (see DrainConfig.Begun). A group-forwarding init passes the signal on at once
// and handlers fork within moments; a bound keeps the ordinary forks of an init-first stop whose
// init takes long to exit (a loop's long sleep, which holds its shell's trap back) signalled.
const LateWindow = 500 * time.Millisecond

// beforeFirstSweep, when set (by a test), runs in Start before the first sweep lists the members.
var beforeFirstSweep func()

// readLate reads the process creations since its last read, marking those within LateWindow of
// the stop's beginning late, with every process they created since (a spared helper's own child
// is its work too); the forks it read go on to forked at the next wait. A sweep calls it after
// listing the members and before signalling them, so that every listed process's creation is
// known: a handler that forks while the drain starts (tini -g passes init's TERM on at once) does
// so after any earlier read. It does nothing when the stop's beginning is not known.
func (d *Drainer) readLate() {
	if d.begun == 0 || d.watch == nil {
		return
	}
	forks, lost := d.watch.read()
	for _, f := range forks { // in the order they happened
		d.markLate(f)
	}
	d.pendingForks = append(d.pendingForks, forks...)
	d.pendingLost = d.pendingLost || lost
	if lost && !d.lateLost {
		d.lateLost = true
		d.report.Notes = append(d.report.Notes, "process creations since the stop began were lost: a handler's helper may have been sent the drain signal")
	}
}

// spareLate reports whether the member pid is not to get the drain signal sig: it was created
// just after the stop began (see readLate). It counts the members it spares.
func (d *Drainer) spareLate(pid int, sig unix.Signal) bool {
	if sig == 0 || sig == unix.SIGKILL || !d.late[pid] {
		return false
	}
	d.spared++
	return true
}

// markLate marks f's child late when it was created within LateWindow of the stop's beginning,
// or by a late process (a spared helper's own child is its work too), and reports whether it did.
func (d *Drainer) markLate(f fork) bool {
	if d.isLate(f.ts) || d.late[f.parent] {
		d.late[f.child] = true
		return true
	}
	return false
}

// isLate reports whether a process created at ts (CLOCK_MONOTONIC) was created within LateWindow
// of the stop's beginning, when that is known: a handler's work, never sent the drain signal,
// even when its parent is signalled after it was created (the drain started before the handler
// forked).
func (d *Drainer) isLate(ts int64) bool {
	return d.begun != 0 && ts >= d.begun && ts-d.begun <= int64(LateWindow)
}

// Close frees a drain that was prepared but will not be started (or finished).
func (d *Drainer) Close() { d.closeAll() }

// watchFd adds fd to the epoll instance.
func (d *Drainer) watchFd(fd int) {
	if d.ep >= 0 {
		unix.EpollCtl(d.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
	}
}

// Finish waits on pidfd readiness until no member remains or the grace period ends, then SIGKILLs
// the rest. Processes that members start meanwhile (a cleanup handler's helpers) are waited for as
// well, without a signal; processes that init starts are not, since init has not been asked to
// stop yet. Cancelling ctx ends the wait at once (the caller is about to SIGKILL everything).
func (d *Drainer) Finish(ctx context.Context) *Report {
	defer d.closeAll()
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		// Without a cancel channel the drain still works; cancellation is then noticed at the
		// next wake-up.
		wake = -1
	} else {
		defer unix.Close(wake)
		d.watchFd(wake)
		stop := context.AfterFunc(ctx, func() {
			unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		})
		defer stop()
	}

	if !d.phase(ctx, wake, d.report.Started.Add(d.grace)) {
		return d.finish(Aborted)
	}
	if d.remaining() > 0 {
		if len(d.bulk) > 0 {
			d.endUnlisted() // what has exited since the list's last read is not opened anew
		}
		d.examineBulk(true)
		d.report.GraceExpired = true
		d.phaseSig = unix.SIGKILL
		for _, t := range d.active {
			d.signal(t, unix.SIGKILL)
			t.killed, t.deferred = true, false
		}
		d.deferred = 0
		for i := 0; i < d.cfg.KillSweeps && d.sweep(unix.SIGKILL) > 0; i++ {
		}
		if !d.phase(ctx, wake, time.Now().Add(d.cfg.KillWait)) {
			return d.finish(Aborted)
		}
	}
	return d.finish(Survived)
}

// phase waits until no member is active or the deadline passes, tracking processes that members
// start. It returns false when ctx was cancelled.
func (d *Drainer) phase(ctx context.Context, wake int, deadline time.Time) bool {
	lastScan := time.Now() // Start or the grace's end has just swept
	interval := rescanMin
	dirty := false
	for {
		if ctx.Err() != nil {
			return false
		}
		d.releaseDeferred()
		d.retryUnopened()
		now := time.Now()
		nextPoll := d.pollBulk(now)
		since := now.Sub(lastScan)
		rescan := d.remaining() == 0 || (dirty && since >= rescanMin)
		if d.watch == nil && since >= interval {
			rescan = true
		}
		if rescan {
			if dirty {
				interval = 2 * rescanMin
			} else {
				interval = min(2*interval, rescanMax)
			}
			d.sweep(d.phaseSig)
			lastScan, dirty = time.Now(), false
			if d.remaining() == 0 {
				d.scanned() // a full pass that is ready may still add members
			}
			if d.remaining() == 0 {
				return true
			}
			now, since = lastScan, 0
		}
		if !now.Before(deadline) {
			return true
		}
		timeout := deadline.Sub(now)
		if nextPoll > 0 {
			timeout = min(timeout, nextPoll)
		}
		if dirty {
			timeout = min(timeout, rescanMin-since)
		} else if d.watch == nil {
			timeout = min(timeout, interval-since)
		}
		if len(d.unopened) > 0 {
			timeout = min(timeout, rescanMin) // nothing wakes the drain for them
		}
		exited, lost := d.wait(wake, timeout)
		if lost || (exited > 0 && d.watch == nil) {
			dirty = true
		}
	}
}

// sweep finds the members not tracked yet from the container itself (or, when the scope has no
// cgroup to list, from the whole process table), signals them with sig unless it is 0, and
// returns how many it found. With sig 0 (during the grace period), a process whose parent is
// init, or one of init's new processes, is left alone.
func (d *Drainer) sweep(sig unix.Signal) int {
	if d.bulk != nil {
		// A bulk drain has looked at init's children: new ones are init's own, and the rest,
		// once signalled, are in the cgroup or zombies.
		if pids, ok := appendCgroupProcs(d.ownChildren(false), d.scope.cgroupDir); ok {
			return d.sweepPids(pids, sig, false)
		}
	}
	if pids, ok := d.scope.candidates(); ok {
		return d.sweepPids(pids, sig, false)
	}
	pids, err := readProcDir()
	if err != nil {
		return 0
	}
	d.prune(pids)
	return d.sweepPids(pids, sig, true)
}

// readProcDir is allPIDs for a sweep (a test injects its failures here).
var readProcDir = allPIDs

// sweepPids is sweep over the listed PIDs. filter says that most of them are not members (the
// whole process table), so that each is checked cheaply before a pidfd is opened for it.
func (d *Drainer) sweepPids(pids []int, sig unix.Signal, filter bool) int {
	if sig != 0 {
		d.readLate() // the listed processes' creations, before any is signalled
	}
	found := 0
	initsOwn := map[int]bool{}
	var batch []*tracked
	for _, pid := range pids {
		if _, ok := d.finished[pid]; ok {
			continue
		}
		if _, ok := d.active[pid]; ok || d.skipped(pid) || d.bulk[pid] != nil {
			// A finished PID is a zombie not reaped yet, or was recycled: a process started by a
			// member is caught by the fork watcher, and the rest are init's own.
			continue
		}
		// A cheap membership check first: most of the host is not the container's, and a pidfd
		// is opened (and membership checked again, see OpenMember) only for members.
		if filter && !d.scope.Contains(pid) {
			continue
		}
		var st Status
		if sig == 0 {
			var err error
			if st, err = ReadStatus(pid); err != nil {
				continue
			}
			if d.initsOwn[pid] || st.PPid == d.scope.Init || d.initsOwn[st.PPid] {
				if st.State != 'Z' {
					initsOwn[pid] = true
				}
				continue
			}
		}
		memberSig := sig
		if d.spareLate(pid, sig) {
			memberSig = 0 // tracked, and retried if it cannot be opened, without the signal
		}
		t := d.open(pid, memberSig)
		if t == nil {
			continue
		}
		found++
		if sig == 0 {
			d.markDeferredOwn(pid, st.PPid)
		} else if !t.deferred && memberSig != 0 {
			batch = append(batch, t)
		}
	}
	if sig == 0 {
		d.initsOwn = initsOwn
	}
	// Every member found is tracked first, then all are signalled in one tight loop: the members'
	// exits, which compete for the CPUs, start when there is nothing left to do but signal.
	d.commands.awaitAll()
	for _, t := range batch {
		d.signal(t, sig)
	}
	return found
}

// track starts tracking pid if it is a member, signalling it with sig unless sig is 0. It reports
// whether pid is now tracked. A nested namespace's init that would drop sig is tracked unsignalled
// and deferred (see releaseDeferred).
func (d *Drainer) track(pid int, sig unix.Signal) bool {
	t := d.open(pid, sig)
	if t == nil {
		return false
	}
	if sig != 0 && !t.deferred {
		d.commands.await(t.detail)
		d.signal(t, sig)
	}
	return true
}

// open starts tracking pid if it is a member, without signalling it yet: track less the signal.
// It returns nil when pid is not tracked.
func (d *Drainer) open(pid int, sig unix.Signal) *tracked {
	t, err := d.openDetailed(pid, sig, newEntry)
	switch {
	case errors.Is(err, errExited):
		d.end(pid, t, AlreadyExited)
		return nil
	case err != nil && !errors.Is(err, ErrGone) && !errors.Is(err, ErrNotMember):
		// Not opened (too many open files, say), which says nothing of its end: it is waited
		// for, and opened again at each wake-up (retryUnopened), signalled with sig then.
		d.unopened[pid] = sig
		d.noteOpenFailure(err)
	}
	return t
}

// retryUnopened opens again the processes that could not be opened, each signalled as it would
// have been (SIGKILL once the grace is over). One that is gone has ended, never signalled.
func (d *Drainer) retryUnopened() {
	if len(d.unopened) == 0 {
		return
	}
	retry := d.unopened
	d.unopened = map[int]unix.Signal{}
	for pid, sig := range retry {
		if d.phaseSig != 0 {
			sig = d.phaseSig
		}
		if d.track(pid, sig) {
			continue
		}
		if _, again := d.unopened[pid]; !again {
			d.report.Totals[AlreadyExited]++
		}
	}
}

// errExited: the member has exited (it may be a zombie).
var errExited = errors.New("the member has exited")

// newEntry asks openDetailed for a new report entry.
const newEntry = -2

// openDetailed is open with the report entry detail (-1: counted only; newEntry: a new one, made
// once pid is confirmed as a member). It returns ErrNotMember for a process that is not a member,
// another error for one that is gone, and errExited with an untracked t, for the caller to end,
// for a member that has exited.
func (d *Drainer) openDetailed(pid int, sig unix.Signal, detail int) (*tracked, error) {
	if _, ok := d.finished[pid]; ok {
		// Seen exit already: a zombie not reaped yet, unless the PID was recycled.
		if st, err := ReadStatus(pid); err != nil || st.State == 'Z' {
			return nil, ErrGone
		}
		delete(d.finished, pid)
	}
	h, ns, err := d.scope.openMember(pid)
	if err != nil {
		return nil, err
	}
	if detail == newEntry {
		detail = d.newDetail(pid)
	}
	t := &tracked{h: h, detail: detail, killed: sig == unix.SIGKILL}
	if h.Exited() {
		return t, errExited
	}
	d.active[pid] = t
	d.byFd[int32(h.fd)] = pid
	d.watchFd(h.fd)
	t.nsIno, t.deferred = d.defers(pid, ns, sig)
	if t.deferred {
		d.deferred++
	}
	return t, nil
}

// newDetail makes the report entry of pid and returns its index, or -1 (counted only) once the
// report details MaxDetailed processes.
func (d *Drainer) newDetail(pid int) int {
	if len(d.report.Processes) >= MaxDetailed {
		d.report.Omitted++
		return -1
	}
	d.report.Processes = append(d.report.Processes, ProcessReport{Pid: pid})
	i := len(d.report.Processes) - 1
	// The command is read aside (a command line can block on the target's memory), but briefly
	// waited for before the signal: a process that dies of it leaves nothing to read.
	d.commands.start(pid, i)
	return i
}

// defers returns pid's PID namespace (ns, when membership has read it already) and whether pid
// must not get sig now: it is PID 1 of a namespace nested in the container's (bubblewrap,
// unshare -p, docker-in-docker), where the kernel drops a signal without a handler, and has none
// for sig. Such an init is SIGKILLed instead, once the rest of its namespace is gone (a SIGKILL
// now would zap its children before their cleanup).
func (d *Drainer) defers(pid int, ns uint64, sig unix.Signal) (uint64, bool) {
	var err error
	if ns == 0 {
		ns, err = procfs.NSInode("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	}
	if err != nil || ns == d.scope.nsIno || ns == d.scope.selfNS || sig == 0 || sig == unix.SIGKILL {
		// In the container's own namespace (or the caller's, for a cgroup scope) only the
		// container's init is a PID 1, and it is never a member.
		return ns, false
	}
	st, err := ReadStatus(pid)
	if err != nil || !st.NamespaceInit() {
		return ns, false
	}
	handles, err := WillHandle(pid, sig)
	return ns, err == nil && !handles
}

// releaseDeferred SIGKILLs each deferred nested init whose namespace holds no other active
// process, apart from those the deferred inits started during the drain.
func (d *Drainer) releaseDeferred() {
	if d.deferred == 0 {
		return
	}
	busy := map[uint64]bool{}
	for _, t := range d.active {
		if !t.deferred && !t.deferredOwn {
			busy[t.nsIno] = true
		}
	}
	for _, t := range d.active {
		if t.deferred && !busy[t.nsIno] {
			t.deferred = false
			d.deferred--
			d.signal(t, unix.SIGKILL)
			t.killed = true
		}
	}
}

// markDeferredOwn marks the tracked process pid as started by a deferred init (or by one of its
// own new processes) when its parent ppid is one.
func (d *Drainer) markDeferredOwn(pid, ppid int) {
	t, p := d.active[pid], d.active[ppid]
	if t != nil && p != nil && (p.deferred || p.deferredOwn) {
		t.deferredOwn = true
	}
}

// forked handles process creations reported by the fork watcher. A child that a member forked
// before the member got the drain signal (after the sweep had listed the process table) gets the
// signal as well.
func (d *Drainer) forked(forks []fork) {
	for _, f := range forks {
		if _, ok := d.active[f.child]; ok || d.skipped(f.child) {
			continue
		}
		if m := d.bulk[f.child]; m != nil {
			if d.bulkSignalled(f.ts) || d.bulkWin.From == 0 {
				continue // listed from the cgroup already
			}
			// A PID of the list recycled by a new process: the listed one has exited.
			d.endBulk(f.child, m, ExitedAfterSignal)
		}
		if d.bulkSignalled(f.ts) && (f.parent == d.scope.Init || d.known(f.parent)) {
			// Created after the cgroup was listed but before the signaller's kill(-1), which
			// reached it: follow it, signalled.
			if t := d.open(f.child, d.cfg.Signal); t != nil {
				d.markBulkSignalled(t)
			}
			continue
		}
		if f.parent == d.scope.Init || d.initsOwn[f.parent] {
			if d.phaseSig == 0 {
				d.initsOwn[f.child] = true
			} else {
				d.track(f.child, d.phaseSig)
			}
			continue
		}
		var sigAt int64
		if p := d.active[f.parent]; p != nil {
			sigAt = p.sigAt
		} else if p, ok := d.finished[f.parent]; ok {
			sigAt = p.sigAt
		} else if d.bulk[f.parent] != nil {
			// Created once kill(-1) had begun: see bulkSignalled. Not signalled by the drain.
			sigAt = d.bulkWin.From
		} else {
			continue
		}
		sig := d.phaseSig
		if sig == 0 && sigAt != 0 && f.ts < sigAt {
			if d.markLate(f) {
				d.spared++
			} else {
				sig = d.cfg.Signal
			}
		}
		if d.track(f.child, sig) && sig == 0 {
			d.markDeferredOwn(f.child, f.parent)
		}
	}
}

// signal sends sig to t, followed by SIGCONT unless sig is SIGKILL or SIGCONT, and records it.
// The drain signal goes as the stop signal to a member that handles that (DrainConfig.StopSignal).
func (d *Drainer) signal(t *tracked, sig unix.Signal) {
	drainSig := sig == d.cfg.Signal
	if drainSig && d.cfg.chooses() && Catches(t.h.Pid, d.cfg.StopSignal) {
		sig = d.cfg.StopSignal
	}
	if drainSig && t.sigAt == 0 {
		var ts unix.Timespec
		if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
			t.sigAt = ts.Nano()
		}
	}
	if err := t.h.Signal(sig); err != nil {
		if errors.Is(err, ErrGone) && !t.signalled {
			t.outcome = AlreadyExited
		}
		return
	}
	t.signalled = true
	d.recordSignal(t, sig)
	if sig != unix.SIGKILL && sig != unix.SIGCONT {
		// As systemd does: a stopped process only acts on the signal once continued.
		if t.h.Signal(unix.SIGCONT) == nil {
			d.recordSignal(t, unix.SIGCONT)
		}
	}
}

// recordSignal adds sig to t's detailed report, if it has one.
func (d *Drainer) recordSignal(t *tracked, sig unix.Signal) {
	if t.detail >= 0 {
		p := &d.report.Processes[t.detail]
		p.Signals = append(p.Signals, SignalName(sig))
	}
}

// wait blocks until a tracked process exits, a process is created, the timeout passes or the
// drain is cancelled. It returns how many tracked processes exited, and whether fork events were
// lost.
func (d *Drainer) wait(wake int, timeout time.Duration) (exited int, lost bool) {
	if forks, gone := d.pendingForks, d.pendingLost; len(forks) > 0 || gone {
		d.pendingForks, d.pendingLost = nil, false
		d.forked(forks)
		defer func() { lost = lost || gone }()
	}
	ready := d.readyFds(wake, max(timeout, 0))
	// The full pass's result is taken last: tracking what it found opens pidfds, which may get
	// the number of a descriptor in ready (the pass's own eventfd, once closed).
	scanReady := false
	if d.scan != nil {
		scanReady = ready[int32(d.scan.fd)]
		delete(ready, int32(d.scan.fd))
	}
	defer func() {
		if scanReady {
			d.scanned()
		}
	}()
	// Forks first: a process may start a helper and exit at once.
	if d.watch != nil && ready[int32(d.watch.fd)] {
		var forks []fork
		forks, lost = d.watch.read()
		d.forked(forks)
	}
	for fd := range ready {
		pid, ok := d.byFd[fd]
		if !ok {
			continue
		}
		t := d.active[pid]
		if !t.h.Exited() {
			// Not this pidfd's readiness: a descriptor number reused while a copy of the old
			// descriptor (held across a fork by one of the shim's children) kept it in epoll.
			continue
		}
		outcome := ExitedAfterSignal
		switch {
		case t.killed:
			outcome = Killed
		case !t.signalled:
			outcome = ExitedUnsignalled
		}
		d.end(pid, t, outcome)
		exited++
	}
	return exited, lost
}

// readyFds waits up to ms milliseconds and returns the readable fds among the tracked pidfds, the
// fork watcher and wake.
func (d *Drainer) readyFds(wake int, timeout time.Duration) map[int32]bool {
	ready := map[int32]bool{}
	if d.ep >= 0 {
		if d.events == nil {
			d.events = make([]unix.EpollEvent, 512)
		}
		n, err := epollWait(d.ep, d.events, timeout)
		for i := 0; err == nil && i < n; i++ {
			ready[d.events[i].Fd] = true
		}
		return ready
	}
	fds := make([]unix.PollFd, 0, len(d.active)+2)
	for _, t := range d.active {
		fds = append(fds, unix.PollFd{Fd: int32(t.h.fd), Events: unix.POLLIN})
	}
	for _, fd := range []int{wake, d.watchFdOrNone()} {
		if fd >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	ts := unix.NsecToTimespec(timeout.Nanoseconds())
	if n, err := unix.Ppoll(fds, &ts, nil); err == nil && n > 0 {
		for _, f := range fds {
			if f.Revents != 0 {
				ready[f.Fd] = true
			}
		}
	}
	return ready
}

func (d *Drainer) watchFdOrNone() int {
	if d.watch == nil {
		return -1
	}
	return d.watch.fd
}

// end records that the tracked process pid ended with outcome o (unless an outcome was set
// earlier) and stops tracking it.
func (d *Drainer) end(pid int, t *tracked, o Outcome) {
	if t.outcome != "" {
		o = t.outcome
	}
	d.report.Totals[o]++
	if t.detail >= 0 {
		p := &d.report.Processes[t.detail]
		p.Outcome = o
		p.After = time.Since(d.report.Started)
	}
	if t.h.fd >= 0 {
		delete(d.byFd, int32(t.h.fd))
		if d.ep >= 0 {
			// Closing is not enough: a copy of the descriptor in a child the shim is just
			// forking would keep it in epoll under a number that a new pidfd may get.
			unix.EpollCtl(d.ep, unix.EPOLL_CTL_DEL, t.h.fd, nil)
		}
	}
	t.h.Close()
	if t.deferred {
		d.deferred--
	}
	delete(d.active, pid)
	d.finished[pid] = finishedPid{gen: d.gen, sigAt: t.sigAt}
	if len(d.finished) >= d.pruneAt {
		if pids, err := allPIDs(); err == nil {
			d.prune(pids)
		}
		d.pruneAt = max(pruneMin, 2*len(d.finished))
	}
}

// prune forgets the finished processes and init's new processes whose PIDs are no longer in pids
// (the process table): they are reaped, so a process with that PID is a new one. This bounds both
// maps by the live processes, whatever a fork storm during a long grace period amounts to.
func (d *Drainer) prune(pids []int) {
	d.gen++
	initsOwn := map[int]bool{}
	for _, pid := range pids {
		if f, ok := d.finished[pid]; ok {
			f.gen = d.gen
			d.finished[pid] = f
		}
		if d.initsOwn[pid] {
			initsOwn[pid] = true
		}
	}
	for pid, f := range d.finished {
		if f.gen != d.gen {
			delete(d.finished, pid)
		}
	}
	d.initsOwn = initsOwn
}

// finish records every process still active with outcome o and completes the report.
func (d *Drainer) finish(o Outcome) *Report {
	d.report.Cancelled = o == Aborted
	for pid, t := range d.active {
		d.end(pid, t, o)
	}
	for pid, m := range d.bulk {
		d.endBulk(pid, m, o)
	}
	if n := len(d.unopened); n > 0 {
		// Never opened, so never signalled nor killed: the kernel's SIGKILL will end them.
		d.report.Totals[o] += n
		d.unopened = map[int]unix.Signal{}
	}
	if d.spared > 0 {
		d.report.Notes = append(d.report.Notes, fmt.Sprintf("%d processes created just after init was signalled (a handler's, as far as can be told) were waited for without the drain signal", d.spared))
	}
	d.commands.collect(d.report.Processes)
	// Entries dropped by dropDetail (listed, but not members) are left out.
	d.report.Processes = slices.DeleteFunc(d.report.Processes, func(p ProcessReport) bool { return p.Pid == 0 })
	d.report.Duration = time.Since(d.report.Started)
	return d.report
}

func (d *Drainer) closeAll() {
	d.endScan()
	for _, t := range d.active {
		t.h.Close()
	}
	for _, m := range d.bulk {
		d.closeBulkHandle(m)
	}
	if d.watch != nil {
		d.watch.close()
		d.watch = nil
	}
	if d.ep >= 0 {
		unix.Close(d.ep)
		d.ep = -1
	}
}

// hostScan is the drain's full pass over /proc, run in a goroutine of its own: it lists the
// members that the sweeps from the container itself did not track.
type hostScan struct {
	fd     int           // eventfd, readable once found is ready
	found  chan []int    // the members the pass found beyond skip
	cancel chan struct{} // closed to end the pass early
	done   chan struct{} // closed when the goroutine has ended
}

// startScan starts the full pass, skipping the processes tracked so far. Without an eventfd (or
// without epoll to wait on it) the pass runs inline instead. A scope without a cgroup to list has
// had its sweeps read the whole process table already: it needs no pass.
func (d *Drainer) startScan() {
	if d.scope.cgroupDir == "" {
		d.report.HostScanDone = true
		return
	}
	skip := make(map[int]bool, len(d.active)+len(d.finished)+1)
	for pid := range d.active {
		skip[pid] = true
	}
	for pid := range d.finished {
		skip[pid] = true
	}
	for pid := range d.bulk {
		skip[pid] = true
	}
	skip[d.scope.Init] = true
	if d.helper > 0 {
		skip[d.helper] = true
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil || d.ep < 0 {
		if err == nil {
			unix.Close(fd)
		}
		d.scanFound(scanMembers(d.scope, skip, nil))
		return
	}
	scan := &hostScan{fd: fd, found: make(chan []int, 1), cancel: make(chan struct{}), done: make(chan struct{})}
	d.scan = scan
	d.watchFd(fd)
	go func() {
		defer close(scan.done)
		// At the lowest priority, on its own thread while it runs: the pass takes what the stop
		// leaves of the CPUs, not a share of them.
		runtime.LockOSThread()
		tid := unix.Gettid()
		if unix.Setpriority(unix.PRIO_PROCESS, tid, 19) == nil {
			defer func() {
				if unix.Setpriority(unix.PRIO_PROCESS, tid, 0) == nil {
					runtime.UnlockOSThread()
				} // else the thread ends with the goroutine, still locked
			}()
		} else {
			runtime.UnlockOSThread()
		}
		found := scanMembers(d.scope, skip, scan.cancel)
		if found != nil {
			scan.found <- found
			unix.Write(scan.fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	}()
}

// scanMembers returns the members of scope in the process table that are not in skip, or nil when
// cancel was closed first. It reads /proc a chunk at a time and checks cancel between chunks and
// every 64 processes, so that a cancelled pass stops within a fraction of a millisecond instead of
// competing for the CPUs with the container's exit (on a host of 20 000 processes, listing /proc
// alone takes several milliseconds).
func scanMembers(scope *Scope, skip map[int]bool, cancel <-chan struct{}) []int {
	f, err := os.Open("/proc")
	if err != nil {
		return []int{}
	}
	defer f.Close()
	found := []int{}
	cancelled := func() bool {
		select {
		case <-cancel:
			return true
		default:
			return false
		}
	}
	for {
		if cancel != nil && cancelled() {
			return nil
		}
		names, err := f.Readdirnames(scanChunk)
		for i, name := range names {
			if i%64 == 63 && cancel != nil && cancelled() {
				return nil
			}
			if name[0] < '0' || name[0] > '9' {
				continue
			}
			if pid, err := strconv.Atoi(name); err == nil && !skip[pid] && scope.Contains(pid) {
				found = append(found, pid)
			}
		}
		if err != nil || len(names) == 0 {
			return found
		}
	}
}

// scanChunk is how many /proc entries the full pass reads at a time.
const scanChunk = 256

// scanned takes the full pass's result, when it is ready.
func (d *Drainer) scanned() {
	if d.scan == nil {
		return
	}
	select {
	case found := <-d.scan.found:
		d.endScan()
		d.scanFound(found)
	default:
	}
}

// scanFound tracks the members that only the full pass found. One that started before the drain
// is a member that the sweeps missed: it gets the drain signal (SIGKILL once the grace is over).
// One that started since, outside everything the sweeps list (a process started by setns during
// the stop, say: a member's own new processes are in its cgroup, and the fork watcher reports
// them), is left alone until the grace is over, and SIGKILLed after.
func (d *Drainer) scanFound(pids []int) {
	d.report.HostScanDone = true
	for _, pid := range pids {
		if _, ok := d.active[pid]; ok {
			continue
		}
		if _, ok := d.finished[pid]; ok {
			continue
		}
		start, ok := startTime(pid)
		if !ok {
			continue
		}
		sig := d.cfg.Signal
		switch {
		case d.phaseSig != 0:
			sig = d.phaseSig
		case start >= d.startTicks:
			// Possibly started since the drain began (ticks are 10 ms): not a missed member.
			continue
		}
		if d.bulkWin.From != 0 && sig == d.cfg.Signal {
			// Started before the drain: the signaller's kill(-1) reached it.
			if t := d.open(pid, sig); t != nil {
				d.markBulkSignalled(t)
				d.report.HostScanFound++
			}
			continue
		}
		if d.track(pid, sig) {
			d.report.HostScanFound++
		}
	}
}

// endScan stops the full pass (if it still runs) and lets it go.
func (d *Drainer) endScan() {
	if d.scan == nil {
		return
	}
	scan := d.scan
	d.scan = nil
	if d.ep >= 0 {
		unix.EpollCtl(d.ep, unix.EPOLL_CTL_DEL, scan.fd, nil)
	}
	close(scan.cancel)
	// The pass notices the cancel within 64 processes (or once it has listed /proc): the drain
	// does not wait for it, and its eventfd is closed when it has gone.
	go func() {
		<-scan.done
		unix.Close(scan.fd)
	}()
}

// bootTicks is now in clock ticks after boot (USER_HZ, as /proc/PID/stat's start time).
func bootTicks() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return uint64(ts.Nano()) / uint64(time.Second/userHZ)
}

// userHZ is the unit of /proc/PID/stat's times: fixed at 100 on Linux.
const userHZ = 100
