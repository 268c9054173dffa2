package process

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Sweeps: finding the members not followed yet, opening a pidfd on each and signalling it.

// sweep finds the members not tracked yet (from the container, else the whole process table),
// signals them with sig unless 0, and returns how many it found. With sig 0, init's children and
// their new processes are left alone.
func (d *Drainer) sweep(sig unix.Signal) int {
	if d.listed != nil {
		// init's children were seen when signalling at once: new ones are init's own, the rest
		// are in the cgroup or zombies.
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
	var batch []*trackedMember
	for _, pid := range pids {
		if _, ok := d.finished[pid]; ok {
			continue
		}
		if _, ok := d.active[pid]; ok || d.skipped(pid) || d.isListed(pid) {
			// A finished PID is a zombie or recycled: by a member's child (the fork watcher has
			// it) or by init's own.
			continue
		}
		// A cheap check first: most of the host is not the container's (OpenMember checks again).
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
	// Track all, then signal in one tight loop: the exits compete with the sweep for the CPUs.
	d.commands.awaitAll()
	for _, t := range batch {
		d.signal(t, sig)
	}
	return found
}

// track tracks pid if it is a member, signalling it with sig unless 0, and reports whether it is
// tracked. A nested init that would drop sig is deferred unsignalled (see releaseDeferred).
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

// open is track less the signal; it returns nil when pid is not tracked.
func (d *Drainer) open(pid int, sig unix.Signal) *trackedMember {
	t, err := d.openDetailed(pid, sig, newEntry)
	switch {
	case errors.Is(err, errExited):
		d.end(pid, t, AlreadyExited)
		return nil
	case err != nil && !errors.Is(err, ErrGone) && !errors.Is(err, ErrNotMember):
		// Not opened (too many open files): waited for, retried by retryUnopened with sig.
		d.unopened[pid] = sig
		d.noteOpenFailure(err)
	}
	return t
}

// retryUnopened retries the unopened processes, each with its owed signal (SIGKILL after the
// grace); one that is gone has ended unsignalled.
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
		_, wasEnded := d.finished[pid]
		if d.track(pid, sig) {
			continue
		}
		_, again := d.unopened[pid]
		if _, ended := d.finished[pid]; !again && (wasEnded || !ended) {
			// Gone or recycled: ended unsignalled (track counted one found exited).
			d.recordEnd(-1, AlreadyExited)
		}
	}
}

// errExited: the member has exited (it may be a zombie).
var errExited = errors.New("the member has exited")

// newEntry asks openDetailed for a new report entry.
const newEntry = -2

// openDetailed is open with the report entry detail (-1: counted only; newEntry: one made once pid
// is confirmed). It returns ErrNotMember for a non-member, another error for one gone, and
// errExited with an untracked t, for the caller to end, for a member that has exited.
func (d *Drainer) openDetailed(pid int, sig unix.Signal, detail int) (*trackedMember, error) {
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
	t := &trackedMember{h: h, detail: detail, killed: sig == unix.SIGKILL}
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

// signal sends sig to t, followed by SIGCONT unless sig is SIGKILL or SIGCONT, and records it.
// The drain signal goes as the stop signal to a member that handles that (DrainConfig.StopSignal).
func (d *Drainer) signal(t *trackedMember, sig unix.Signal) {
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
	d.recordSignal(t.detail, sig)
	if continues(sig) && t.h.Signal(unix.SIGCONT) == nil {
		d.recordSignal(t.detail, unix.SIGCONT)
	}
}
