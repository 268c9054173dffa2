package process

import (
	"golang.org/x/sys/unix"
)

// The members' lifecycle: listed (listfollow.go) or tracked through a pidfd, then ended, with one
// record of each end in the report (recordEnd).

// trackedMember is a member followed through a pidfd of its own.
type trackedMember struct {
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

// end records that the tracked process pid ended with outcome o (unless an outcome was set
// earlier) and stops tracking it.
func (d *Drainer) end(pid int, t *trackedMember, o Outcome) {
	if t.outcome != "" {
		o = t.outcome
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
	d.recordEnd(t.detail, o)
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

// noteOpenFailure notes, once, that a member could not be opened for a reason other than its end.
func (d *Drainer) noteOpenFailure(err error) {
	if !d.openFailed {
		d.openFailed = true
		d.report.Notes = append(d.report.Notes, "a member could not be followed through a pidfd ("+err.Error()+"): it was waited for all the same")
	}
}

// remaining is how many members the drain still waits for.
func (d *Drainer) remaining() int { return len(d.active) + d.listedLeft() + len(d.unopened) }
