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
	// KillWait bounds the wait for SIGKILLed members (one in D state is reported as survived).
	KillWait time.Duration
	// KillSweeps (at least one) bounds the final SIGKILL sweeps, which a fork bomb would refill.
	KillSweeps int
	// Signaller, if set, signals all members at once from inside the container's own PID
	// namespace (see listfollow.go); else each member is signalled through its pidfd.
	Signaller Signaller
	// StopSignal, when set and not Signal, replaces Signal for members that catch it (nginx
	// quits gracefully only on SIGQUIT); such a drain never signals at once.
	StopSignal unix.Signal
	// Begun, when set, is a fork watch made before init got the stop signal; the drain takes
	// it over. Processes created within LateWindow of its mark are a handler's work (tini -g):
	// waited for and sent only the final SIGKILL, unless the drain signals at once.
	Begun *ForkWatch
}

// chooses reports whether the drain picks each member's signal (StopSignal differs from Signal).
func (c DrainConfig) chooses() bool {
	return c.StopSignal != 0 && c.StopSignal != c.Signal
}

// Without a fork watcher the process table is re-read after exits (at most every rescanMin),
// else at an interval backing off to rescanMax; with one, only to confirm the end.
const (
	rescanMin = 10 * time.Millisecond
	rescanMax = 250 * time.Millisecond
)

// Drainer is a drain in progress: Start signals the members found, Finish waits for them.
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
	// initsOwn are init's own new processes since the drain began: not waited for.
	initsOwn map[int]bool
	// scan is the full /proc pass run aside after the first signals; nil once its result is taken.
	scan *hostScan
	// startTicks is the drain's start in clock ticks after boot, as /proc/PID/stat's start time.
	startTicks uint64
	// begun is when the stop began (0: unknown); late are processes created within LateWindow
	// of it before the drain started, never sent the drain signal.
	begun    int64
	late     map[int]bool
	lateLost bool // creations were lost to readLate (noted once)
	spared   int  // members left unsignalled for it
	// pendingForks and pendingLost are what readLate took from the watch, for the next wait.
	pendingForks []fork
	pendingLost  bool

	// listed follows the cgroup's members when signalling at once (listfollow.go; else nil).
	listed       *listFollower
	signallerPid int
	// unopened are members not opened yet (too many open files), with the signal each is owed.
	unopened map[int]unix.Signal
	// openFailed: such an open failed (noted once).
	openFailed bool
}

// Drain signals every member of scope except init with cfg.Signal, waits until none remains or
// the grace period ends, then SIGKILLs the rest: PrepareDrain, Start and Finish in one. A /proc
// pass run aside finds members outside the cgroup (setns); the drain does not wait for it.
func Drain(ctx context.Context, scope *Scope, cfg DrainConfig, grace time.Duration) *Report {
	return PrepareDrain(scope, cfg).Start(grace).Finish(ctx)
}

// PrepareDrain readies a drain without signalling (fork watch, member list), so that Start has
// little left to do. A prepared drain that is not started must be closed (Close).
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

// Start signals every current member except init and returns; the grace period starts now. It
// never signals a non-member (see Scope.OpenMember).
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
		// kill(-1) also reached a handler's new processes: none is spared.
		d.begun = 0
	} else {
		d.sweep(d.cfg.Signal)
	}
	d.startScan()
	return d
}

// Close frees a drain that was prepared but will not be started (or finished).
func (d *Drainer) Close() { d.closeAll() }

// Finish waits until no member remains or the grace period ends, then SIGKILLs the rest; new
// processes of members are waited for too, init's are not. Cancelling ctx ends the wait.
func (d *Drainer) Finish(ctx context.Context) *Report {
	defer d.closeAll()
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		// Cancellation is then noticed at the next wake-up.
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

// phase waits until no member is active or deadline passes; false means ctx was cancelled.
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
