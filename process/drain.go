package process

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// DrainConfig is how to drain a container's processes.
type DrainConfig struct {
	// Signal is sent to every member (followed by SIGCONT, so a stopped process can act on it).
	Signal unix.Signal
	// Grace is how long members have to exit before the rest are SIGKILLed.
	Grace time.Duration
	// KillWait bounds the wait for SIGKILLed members to disappear (default 2s). A process in
	// uninterruptible sleep may outlive it; it is reported as survived.
	KillWait time.Duration
}

// Outcome is how one process ended during a drain.
type Outcome string

const (
	// AlreadyExited: the process had exited (a zombie) before it could be signalled.
	AlreadyExited Outcome = "already-exited"
	// ExitedAfterSignal: the process exited within the grace period after the drain signal.
	ExitedAfterSignal Outcome = "exited"
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
	Scope        ScopeKind       `json:"scope"`
	Signal       string          `json:"signal"`
	Grace        time.Duration   `json:"grace_ns"`
	Started      time.Time       `json:"started"`
	Duration     time.Duration   `json:"duration_ns"`
	GraceExpired bool            `json:"grace_expired"`
	Cancelled    bool            `json:"cancelled"`
	Processes    []ProcessReport `json:"processes"`
}

// Count returns how many processes ended with outcome o.
func (r *Report) Count(o Outcome) int {
	n := 0
	for _, p := range r.Processes {
		if p.Outcome == o {
			n++
		}
	}
	return n
}

// rescan bounds how often the process table is re-read to find processes forked after the drain
// started: at once after any exit, but no more often than rescanMin, and at the latest after
// rescanMax while nothing exits.
const (
	rescanMin = 10 * time.Millisecond
	rescanMax = 250 * time.Millisecond
)

type tracked struct {
	h      *Handle
	report int // index in Report.Processes
	killed bool
}

// Drainer is a drain in progress: StartDrain has signalled the members found so far, Finish waits
// for them.
type Drainer struct {
	scope    *Scope
	cfg      DrainConfig
	report   *Report
	active   map[int]*tracked
	finished map[int]bool
}

// Drain signals every member of scope except its init with cfg.Signal, waits on pidfd readiness
// until none remains or cfg.Grace ends, then SIGKILLs the rest. It is StartDrain and Finish in one.
func Drain(ctx context.Context, scope *Scope, cfg DrainConfig) *Report {
	return StartDrain(scope, cfg).Finish(ctx)
}

// StartDrain sends cfg.Signal to every current member of scope except its init and returns at
// once; the grace period starts now. It never signals a process that is not a member (see
// Scope.OpenMember).
func StartDrain(scope *Scope, cfg DrainConfig) *Drainer {
	if cfg.KillWait <= 0 {
		cfg.KillWait = 2 * time.Second
	}
	d := &Drainer{
		scope:    scope,
		cfg:      cfg,
		active:   map[int]*tracked{},
		finished: map[int]bool{},
		report: &Report{
			Scope:   scope.Kind,
			Signal:  SignalName(cfg.Signal),
			Grace:   cfg.Grace,
			Started: time.Now(),
		},
	}
	d.sweep(cfg.Signal)
	return d
}

// Finish waits on pidfd readiness until no member remains or the grace period ends, then SIGKILLs
// the rest. Processes forked meanwhile are found by re-reading the process table and signalled
// too. Cancelling ctx ends the wait at once (the caller is about to SIGKILL everything).
func (d *Drainer) Finish(ctx context.Context) *Report {
	defer d.closeAll()
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		// Without a cancel channel the drain still works; cancellation is then noticed at the
		// next wake-up.
		wake = -1
	} else {
		defer unix.Close(wake)
		stop := context.AfterFunc(ctx, func() {
			unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		})
		defer stop()
	}

	deadline := d.report.Started.Add(d.cfg.Grace)
	if !d.phase(ctx, wake, d.cfg.Signal, deadline) {
		return d.finish(Aborted)
	}
	if len(d.active) > 0 {
		d.report.GraceExpired = true
		for _, t := range d.active {
			d.signal(t, unix.SIGKILL)
			t.killed = true
		}
		d.sweep(unix.SIGKILL)
		if !d.phase(ctx, wake, unix.SIGKILL, time.Now().Add(d.cfg.KillWait)) {
			return d.finish(Aborted)
		}
	}
	return d.finish(Survived)
}

// phase sweeps in new members with sig and waits until none is active or the deadline passes. It
// returns false when ctx was cancelled. The process table is re-read soon after exits (a leaving
// process may have forked) and otherwise at a backing-off interval, to find processes forked by
// members that keep running.
func (d *Drainer) phase(ctx context.Context, wake int, sig unix.Signal, deadline time.Time) bool {
	lastScan := time.Now() // StartDrain or the grace's end has just swept
	interval := rescanMin
	dirty := false
	for {
		if ctx.Err() != nil {
			return false
		}
		now := time.Now()
		since := now.Sub(lastScan)
		if len(d.active) == 0 || (dirty && since >= rescanMin) || since >= interval {
			if !dirty {
				interval = min(2*interval, rescanMax)
			} else {
				interval = 2 * rescanMin
			}
			d.sweep(sig)
			lastScan, dirty = time.Now(), false
			if len(d.active) == 0 {
				return true
			}
			now, since = lastScan, 0
		}
		if !now.Before(deadline) {
			return true
		}
		next := interval
		if dirty {
			next = rescanMin
		}
		if d.wait(wake, min(deadline.Sub(now), next-since)) > 0 {
			dirty = true
		}
	}
}

// sweep finds members that are not tracked yet and signals them.
func (d *Drainer) sweep(sig unix.Signal) {
	pids, err := allPIDs()
	if err != nil {
		return
	}
	for _, pid := range pids {
		if _, ok := d.active[pid]; ok || pid == d.scope.Init {
			continue
		}
		if d.finished[pid] {
			// Seen exit already: a zombie not reaped yet, unless the PID was recycled.
			if st, err := ReadStatus(pid); err != nil || st.State == 'Z' {
				continue
			}
			delete(d.finished, pid)
		}
		h, err := d.scope.OpenMember(pid)
		if err != nil {
			continue
		}
		d.report.Processes = append(d.report.Processes, ProcessReport{Pid: pid, Command: Command(pid)})
		t := &tracked{h: h, report: len(d.report.Processes) - 1, killed: sig == unix.SIGKILL}
		if h.Exited() {
			d.end(pid, t, AlreadyExited)
			continue
		}
		d.active[pid] = t
		d.signal(t, sig)
	}
}

func (d *Drainer) signal(t *tracked, sig unix.Signal) {
	p := &d.report.Processes[t.report]
	if err := t.h.Signal(sig); err != nil {
		if errors.Is(err, ErrGone) && len(p.Signals) == 0 {
			p.Outcome = AlreadyExited
		}
		return
	}
	p.Signals = append(p.Signals, SignalName(sig))
	if sig != unix.SIGKILL && sig != unix.SIGCONT {
		// As systemd does: a stopped process only acts on the signal once continued.
		if t.h.Signal(unix.SIGCONT) == nil {
			p.Signals = append(p.Signals, "SIGCONT")
		}
	}
}

// wait blocks until a tracked process exits, the timeout passes or the drain is cancelled, and
// returns how many tracked processes exited.
func (d *Drainer) wait(wake int, timeout time.Duration) int {
	fds := make([]unix.PollFd, 0, len(d.active)+1)
	pids := make([]int, 0, len(d.active))
	for pid, t := range d.active {
		fds = append(fds, unix.PollFd{Fd: int32(t.h.fd), Events: unix.POLLIN})
		pids = append(pids, pid)
	}
	if wake >= 0 {
		fds = append(fds, unix.PollFd{Fd: int32(wake), Events: unix.POLLIN})
	}
	ms := int((timeout + time.Millisecond - 1) / time.Millisecond)
	n, err := unix.Poll(fds, ms)
	if err != nil || n == 0 {
		return 0
	}
	exited := 0
	for i, pid := range pids {
		if fds[i].Revents == 0 {
			continue
		}
		t := d.active[pid]
		outcome := ExitedAfterSignal
		if t.killed {
			outcome = Killed
		}
		d.end(pid, t, outcome)
		exited++
	}
	return exited
}

func (d *Drainer) end(pid int, t *tracked, o Outcome) {
	p := &d.report.Processes[t.report]
	if p.Outcome == "" {
		p.Outcome = o
	}
	p.After = time.Since(d.report.Started)
	t.h.Close()
	delete(d.active, pid)
	d.finished[pid] = true
}

// finish records every process still active with outcome o and completes the report.
func (d *Drainer) finish(o Outcome) *Report {
	d.report.Cancelled = o == Aborted
	for pid, t := range d.active {
		d.end(pid, t, o)
	}
	d.report.Duration = time.Since(d.report.Started)
	return d.report
}

func (d *Drainer) closeAll() {
	for _, t := range d.active {
		t.h.Close()
	}
}
