package process

import (
	"time"

	"golang.org/x/sys/unix"
)

// Process creations during a drain: a handler's helpers spared, a member's new children signalled.

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

// forked handles process creations reported by the fork watcher. A child that a member forked
// before the member got the drain signal (after the sweep had listed the process table) gets the
// signal as well.
func (d *Drainer) forked(forks []fork) {
	for _, f := range forks {
		if _, ok := d.active[f.child]; ok || d.skipped(f.child) {
			continue
		}
		if d.isListed(f.child) {
			if d.signalledBefore(f.ts) || d.atOnceAt() == 0 {
				continue // listed from the cgroup already
			}
			// A PID of the list recycled by a new process: the listed one has exited.
			d.endListed(f.child, ExitedAfterSignal)
		}
		if d.signalledBefore(f.ts) && (f.parent == d.scope.Init || d.known(f.parent)) {
			// Created after the cgroup was listed but before the signaller's kill(-1), which
			// reached it: follow it, signalled.
			if t := d.open(f.child, d.cfg.Signal); t != nil {
				d.markSignalledAtOnce(t)
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
		} else if d.isListed(f.parent) {
			// Created once kill(-1) had begun: see signalledBefore. Not signalled by the drain.
			sigAt = d.atOnceAt()
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
