package process

import (
	"golang.org/x/sys/unix"
)

// trackedMember is a member followed through a pidfd of its own.
type trackedMember struct {
	h      *Handle
	detail int // index in Report.Processes, -1 when the process is only counted
	killed bool
	// signalled: the drain signal (or SIGKILL) was delivered; outcome, if set, overrides exit's.
	signalled bool
	outcome   Outcome
	// sigAt is when the drain signal went (CLOCK_MONOTONIC; 0: not yet): earlier forks need it.
	sigAt int64
	// nsIno is the PID namespace; deferred marks a nested init to SIGKILL once its namespace
	// empties, deferredOwn a process started by such an init or its descendants.
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

// end stops tracking pid and records its end with o, or with the outcome set earlier.
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

// prune forgets finished and initsOwn PIDs no longer in pids (reaped), bounding both maps by the
// live processes whatever a fork storm amounts to.
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

func (d *Drainer) noteOpenFailure(err error) {
	if !d.openFailed {
		d.openFailed = true
		d.report.Notes = append(d.report.Notes, "a member could not be followed through a pidfd ("+err.Error()+"): it was waited for all the same")
	}
}

func (d *Drainer) remaining() int { return len(d.active) + d.listedLeft() + len(d.unopened) }
