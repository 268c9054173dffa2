package process

import (
	"context"
	"time"

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
	// once from inside the namespace (see listfollow.go); else each member is signalled through its
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

// Without a fork watcher, the process table is re-read to find processes started during the
// drain: soon after any exit (no more often than rescanMin) and, while nothing exits, at an
// interval backing off to rescanMax. With the watcher it is re-read only to confirm the end.
const (
	rescanMin = 10 * time.Millisecond
	rescanMax = 250 * time.Millisecond
)

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
	active   map[int]*trackedMember
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

	// listed follows the members listed from the container's cgroup, for a drain that signals
	// at once (listfollow.go; nil otherwise), and signallerPid is the signaller's PID.
	listed       *listFollower
	signallerPid int
	// unopened are members that could not be opened other than for their end (too many open
	// files), with the signal each is owed: waited for, and opened again at each wake-up.
	unopened map[int]unix.Signal
	// openFailed: a member could not be opened other than for its end (noted once).
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
// and, for a drain that signals at once (see listfollow.go), lists the members and starts reading
// the commands of the first of them, so that Start has little left to do. A prepared drain that is
// not started must be closed (Close).
func PrepareDrain(scope *Scope, cfg DrainConfig) *Drainer {
	cfg.KillSweeps = max(cfg.KillSweeps, 1)
	d := &Drainer{
		scope:    scope,
		cfg:      cfg,
		active:   map[int]*trackedMember{},
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
	d.prepareList()
	return d
}

// Start sends the drain signal to every current member of the scope except its init and returns
// at once; the grace period, of length grace, starts now. It never signals a process that is not
// a member (see Scope.OpenMember; a drain that signals at once does so from inside the container's namespace).
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
	if d.signalAtOnce(d.cfg.Signal) {
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

// Close frees a drain that was prepared but will not be started (or finished).
func (d *Drainer) Close() { d.closeAll() }

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
		if d.listedLeft() > 0 {
			d.endUnlisted() // what has exited since the list's last read is not opened anew
		}
		d.examineListed(true)
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
		nextPoll := d.pollListed(now)
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

func (d *Drainer) closeAll() {
	d.endScan()
	for _, t := range d.active {
		t.h.Close()
	}
	if d.listed != nil {
		for _, m := range d.listed.members {
			d.listed.closeHandle(m)
		}
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
