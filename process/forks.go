package process

import (
	"time"

	"golang.org/x/sys/unix"
)

// Process creations during a drain: a handler's helpers spared, a member's new children signalled.

// LateWindow is how long after init got the stop signal a new process is taken for a handler's
// work (see DrainConfig.Begun); bounded, so an init slow to exit does not spare ordinary forks.
const LateWindow = 500 * time.Millisecond

// beforeFirstSweep, when set (by a test), runs in Start before the first sweep lists the members.
var beforeFirstSweep func()

// readLate reads the creations since its last read, marking late those within LateWindow of the
// stop's beginning and their descendants; a sweep calls it between listing and signalling members.
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

// spareLate reports whether member pid is late and so spared the drain signal sig, counting it.
func (d *Drainer) spareLate(pid int, sig unix.Signal) bool {
	if sig == 0 || sig == unix.SIGKILL || !d.late[pid] {
		return false
	}
	d.spared++
	return true
}

// markLate marks f's child late if isLate or its parent is, and reports whether it did.
func (d *Drainer) markLate(f fork) bool {
	if d.isLate(f.ts) || d.late[f.parent] {
		d.late[f.child] = true
		return true
	}
	return false
}

// isLate reports whether ts (CLOCK_MONOTONIC) is within LateWindow of the stop's known beginning.
func (d *Drainer) isLate(ts int64) bool {
	return d.begun != 0 && ts >= d.begun && ts-d.begun <= int64(LateWindow)
}

// forked handles the fork watcher's creations. A member's child forked before the member got the
// drain signal (after the sweep listed it) gets the signal too; a late one is spared.
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
			// Created between the cgroup's listing and kill(-1), which reached it.
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
