package process

import (
	"errors"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Signalling at once: with a Signaller and a container in a PID namespace of its own, the members
// listed from the cgroup are signalled together from inside the namespace (kill(-1)) and followed
// without a pidfd each, through cgroup.procs, which drops a process once it has exited.
//
// A member still listed when the list stops shrinking, or at the grace period's end, is examined:
// confirmed as a member and tracked with a pidfd, as in a sweep (so a nested init is deferred).
// kill(-1) also reaches members outside the cgroup (setns); sweeps and the full pass track them.

// listFollower follows a drain's listed members through cgroup.procs and the task count.
type listFollower struct {
	scope   *Scope
	members map[int]*listedMember
	// win is when the members were signalled (zero until they are).
	win SignalWindow
	// polled is the last poll; gen counts the reads of the list, and buf is their buffer.
	polled time.Time
	gen    uint32
	buf    []int
	// count is the task count (pids.current) at the last poll; base, the tasks that were no
	// listed member at the last read of the list (see due).
	count, base int
	// handles counts the detailed members' open pidfds, listed (possibly stale) in handlePids;
	// endedSince counts ends seen through them since the list's last read.
	handles    int
	handlePids []int
	endedSince int
	pollFds    []unix.PollFd
	// readFailed: a read of the list failed other than for a gone cgroup (noted once).
	readFailed bool
}

// listedMember is a member followed through cgroup.procs.
type listedMember struct {
	detail int    // index in Report.Processes, -1 when the process is only counted
	seen   uint32 // the last read of the list that showed it
	// h is a detailed member's pidfd (nil: none), polled to time its end without reading the list.
	h *Handle
}

// pollMin and pollMax bound the interval between polls, pollPerMember per member left. A poll reads
// cgroup.procs only when due: cgroup v1 builds it under a lock every exiting task takes.
const (
	pollMin       = 500 * time.Microsecond
	pollMax       = 20 * time.Millisecond
	pollPerMember = 2 * time.Microsecond
)

// read reads cgroup.procs and marks the members listed (gen); fs.ErrNotExist: the cgroup is gone.
func (f *listFollower) read() ([]int, error) {
	f.gen++
	pids, err := readCgroupTree(f.buf[:0], f.scope.cgroupDir)
	f.buf = pids
	if err == nil {
		for _, pid := range pids {
			if m := f.members[pid]; m != nil {
				m.seen = f.gen
			}
		}
	}
	return pids, err
}

func (f *listFollower) unlisted() []int {
	var pids []int
	for pid, m := range f.members {
		if m.seen != f.gen {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove stops following pid and returns its member entry (nil if it was not followed).
func (f *listFollower) remove(pid int) *listedMember {
	m := f.members[pid]
	if m == nil {
		return nil
	}
	delete(f.members, pid)
	f.closeHandle(m)
	return m
}

// openHandle keeps h, a pidfd on the detailed member pid, to poll.
func (f *listFollower) openHandle(pid int, m *listedMember, h *Handle) {
	m.h = h
	f.handles++
	f.handlePids = append(f.handlePids, pid)
}

func (f *listFollower) closeHandle(m *listedMember) {
	if m.h != nil {
		m.h.Close()
		m.h = nil
		f.handles--
	}
}

// exitedHandles returns the detailed members whose pidfd says they have exited.
func (f *listFollower) exitedHandles() []int {
	if f.handles == 0 {
		return nil
	}
	fds := f.pollFds[:0]
	pids := f.handlePids[:0] // compacted to the members whose pidfd is still open
	for _, pid := range f.handlePids {
		if m := f.members[pid]; m != nil && m.h != nil {
			fds = append(fds, unix.PollFd{Fd: int32(m.h.Fd()), Events: unix.POLLIN})
			pids = append(pids, pid)
		}
	}
	f.pollFds, f.handlePids = fds, pids
	n, err := unix.Poll(fds, 0)
	if err != nil || n <= 0 {
		return nil
	}
	var exited []int
	for i, fd := range fds {
		if fd.Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
			exited = append(exited, pids[i])
		}
	}
	return exited
}

func (f *listFollower) interval() time.Duration {
	return min(max(time.Duration(f.left())*pollPerMember, pollMin), pollMax)
}

// due reads the task count and reports whether cgroup.procs is to be read: not while the count
// keeps falling above the non-member tasks (a zombie counts but is not listed); always without a
// count. stalled says the count stopped falling (or is unknown): only then does a read showing no
// end make the drain examine the members left one by one.
func (f *listFollower) due() (due, stalled bool) {
	n, ok := f.scope.taskCount()
	if !ok {
		return true, true
	}
	prev := f.count
	f.count = n
	left := n - f.base
	stalled = prev != 0 && n >= prev
	return prev == 0 || stalled || left <= 0, stalled
}

// left estimates the members left: the last list's, less what the task count has lost since.
func (f *listFollower) left() int {
	if f.count == 0 {
		return len(f.members)
	}
	return min(len(f.members), max(f.count-f.base, 1))
}

// signalledBefore reports whether a process created at ts (CLOCK_MONOTONIC) existed before the
// signaller's kill(-1). A later one needs no signal: kill(-1) walks the task list under
// tasklist_lock, which fork takes, so it was reached or forked by an already signalled parent.
func (f *listFollower) signalledBefore(ts int64) bool {
	return f.win.From != 0 && ts < f.win.From
}

// prepareList lists the cgroup's members if the drain is to signal at once (signalAtOnce).
func (d *Drainer) prepareList() {
	sig := d.cfg.Signal
	if d.cfg.Signaller == nil || !d.scope.CanSignalAtOnce() || sig == 0 || sig == unix.SIGKILL || d.cfg.chooses() {
		return
	}
	pids, ok := d.scope.cgroupList()
	if !ok {
		return
	}
	d.listed = &listFollower{scope: d.scope, members: make(map[int]*listedMember, len(pids))}
	d.addListed(pids)
}

// cgroupList lists the container's cgroup tree, unconfirmed; ok is false without a cgroup.
func (s *Scope) cgroupList() (pids []int, ok bool) {
	if s.cgroupDir == "" {
		return nil, false
	}
	return appendCgroupProcs(nil, s.cgroupDir)
}

// addListed adds the listed PIDs that the drain does not know yet as listed members.
func (d *Drainer) addListed(pids []int) {
	for _, pid := range pids {
		if !d.known(pid) {
			d.listed.members[pid] = &listedMember{detail: d.newDetail(pid), seen: d.listed.gen}
		}
	}
}

// openDetailedHandles opens a pidfd on each detailed listed member once the signal is out; one
// already gone ended after the signal (the list read just before showed it).
func (d *Drainer) openDetailedHandles() {
	for pid, m := range d.listed.members {
		if m.detail < 0 {
			continue
		}
		h, _, err := d.scope.openMember(pid)
		switch {
		case errors.Is(err, ErrGone):
			d.endListed(pid, ExitedAfterSignal)
			d.listed.endedSince++
		case err == nil:
			d.listed.openHandle(pid, m, h)
		}
	}
}

// endExitedHandles ends with o the detailed listed members whose pidfd says they have exited.
func (d *Drainer) endExitedHandles(o Outcome) {
	for _, pid := range d.listed.exitedHandles() {
		d.endListed(pid, o)
		d.listed.endedSince++
	}
}

// signalAtOnce re-reads the list (a member gone since exited before the signal) and signals every
// member at once. It returns false when the drain does not signal at once; the caller then sweeps.
func (d *Drainer) signalAtOnce(sig unix.Signal) bool {
	if d.listed == nil {
		return false
	}
	// The signaller is in the namespace, as the shim's child: it is never a member.
	d.signallerPid = d.cfg.Signaller.Pid()
	if m := d.listed.remove(d.signallerPid); m != nil {
		d.dropDetail(m.detail)
	}
	if pids, err := d.listed.read(); err == nil {
		for _, pid := range d.listed.unlisted() {
			d.endListed(pid, AlreadyExited)
		}
		d.addListed(pids)
	}
	// init's and the shim's children outside the cgroup are tracked (kill(-1) reaches them), read
	// before the signal: after it, init has every orphan as a child.
	var outside []*trackedMember
	for _, pid := range d.ownChildren(true) {
		if d.known(pid) {
			continue
		}
		t, err := d.openDetailed(pid, sig, newEntry)
		switch {
		case errors.Is(err, errExited):
			d.end(pid, t, AlreadyExited)
		case err == nil:
			outside = append(outside, t)
		}
	}
	// Keep finished entries (a zombie is still init's child) rather than prune by a /proc scan.
	d.pruneAt = max(d.pruneAt, 2*len(d.listed.members))
	d.commands.awaitAll()
	win, err := d.cfg.Signaller.SignalAll(sig)
	if err != nil {
		d.report.Notes = append(d.report.Notes, "signalling the namespace at once failed ("+err.Error()+"): the members were signalled one by one")
		d.readLate() // one by one, a handler's new processes are spared
		for _, t := range append(outside, d.examineListed(false)...) {
			if !t.deferred && !d.spareLate(t.h.Pid, sig) {
				d.signal(t, sig)
			}
		}
		return false // the sweep signals the rest
	}
	d.listed.win = win
	d.report.AtOnce = len(d.listed.members)
	for _, m := range d.listed.members {
		d.recordDelivered(m.detail, sig)
	}
	for _, t := range outside {
		d.markSignalledAtOnce(t)
	}
	// The list was read just before the signal: the task count now is the polls' base.
	if n, ok := d.scope.taskCount(); ok {
		d.listed.count, d.listed.base = n, n-len(d.listed.members)
	}
	d.openDetailedHandles()
	d.listed.polled = time.Time{} // the first poll is due at once
	return true
}

// ownChildren lists the shim's children and, with init, init's.
func (d *Drainer) ownChildren(init bool) []int {
	var pids []int
	if init {
		pids = appendChildren(pids, d.scope.Init)
	}
	return appendChildren(pids, os.Getpid())
}

// known reports whether pid is init, the signaller, or followed or seen exiting by the drain.
func (d *Drainer) known(pid int) bool {
	if d.skipped(pid) || d.isListed(pid) || d.active[pid] != nil {
		return true
	}
	_, ok := d.finished[pid]
	return ok
}

func (d *Drainer) isListed(pid int) bool {
	return d.listed != nil && d.listed.members[pid] != nil
}

// markSignalledAtOnce records that the signal at once reached the tracked process t.
func (d *Drainer) markSignalledAtOnce(t *trackedMember) {
	t.signalled = true
	t.sigAt = d.listed.win.From
	d.recordDelivered(t.detail, d.cfg.Signal)
}

// skipped reports whether pid is never a member to track: init, or the signaller.
func (d *Drainer) skipped(pid int) bool {
	return pid == d.scope.Init || (d.signallerPid > 0 && pid == d.signallerPid)
}

// pollListed polls the listed members when due; it returns the time to the next poll (0: none).
func (d *Drainer) pollListed(now time.Time) time.Duration {
	if d.listed == nil || len(d.listed.members) == 0 {
		return 0
	}
	interval := d.listed.interval()
	if due := d.listed.polled.Add(interval); now.Before(due) {
		return due.Sub(now)
	}
	d.listed.polled = now
	d.endExitedHandles(ExitedAfterSignal)
	due, stalled := d.listed.due()
	if !due {
		return interval
	}
	if ended := d.endUnlisted(); ended == 0 && stalled {
		// The count stopped falling and the list shows no end since its last read.
		d.examineListed(true)
	}
	if len(d.listed.members) == 0 {
		return 0
	}
	return interval
}

// endUnlisted re-reads the list and ends the members it no longer lists (all if the cgroup is gone;
// none, noted once, if the read fails otherwise). It returns the ends since the last read, pidfd
// ones included, and resets the count's base.
func (d *Drainer) endUnlisted() int {
	f := d.listed
	ended := f.endedSince
	f.endedSince = 0
	if _, err := f.read(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		if !f.readFailed {
			f.readFailed = true
			d.report.Notes = append(d.report.Notes, "reading the container's process list failed ("+err.Error()+"): its members were followed on, not taken for exited")
		}
		return ended
	}
	for _, pid := range f.unlisted() {
		d.endListed(pid, ExitedAfterSignal)
		ended++
	}
	f.base = f.count - len(f.members)
	return ended
}

// examineListed tracks each listed member left with a pidfd once confirmed as a member (signalled:
// the signal at once reached them); a non-member is dropped. It returns those it tracks.
func (d *Drainer) examineListed(signalled bool) []*trackedMember {
	if d.listed == nil {
		return nil
	}
	// A detailed member's pidfd tells first whether it has exited: its PID may be reused by now.
	o := AlreadyExited
	if signalled {
		o = ExitedAfterSignal
	}
	d.endExitedHandles(o)
	var tracks []*trackedMember
	for pid, m := range d.listed.members {
		t, err := d.openDetailed(pid, d.cfg.Signal, m.detail)
		if err != nil && !errors.Is(err, ErrNotMember) && !errors.Is(err, errExited) && !errors.Is(err, ErrGone) {
			// Not opened (too many open files): it stays listed, examined again later.
			d.noteOpenFailure(err)
			continue
		}
		d.listed.remove(pid)
		switch {
		case errors.Is(err, ErrNotMember):
			d.dropDetail(m.detail)
		case errors.Is(err, errExited):
			d.end(pid, t, o)
		case err != nil: // ErrGone
			d.endedListed(pid, m, o)
		default:
			if signalled {
				t.signalled = true
				t.sigAt = d.listed.win.From
			}
			tracks = append(tracks, t)
		}
	}
	return tracks
}

func (d *Drainer) endListed(pid int, o Outcome) {
	if m := d.listed.remove(pid); m != nil {
		d.endedListed(pid, m, o)
	}
}

// endedListed records with o the end of m, the unfollowed member pid, signalled at once if at all.
func (d *Drainer) endedListed(pid int, m *listedMember, o Outcome) {
	d.recordEnd(m.detail, o)
	d.finished[pid] = finishedPid{gen: d.gen, sigAt: d.listed.win.From}
}

func (d *Drainer) listedLeft() int {
	if d.listed == nil {
		return 0
	}
	return len(d.listed.members)
}

// atOnceAt is when the signal at once began (CLOCK_MONOTONIC), 0 if there was none.
func (d *Drainer) atOnceAt() int64 {
	if d.listed == nil {
		return 0
	}
	return d.listed.win.From
}

// signalledBefore reports whether a process created at ts got the signal at once.
func (d *Drainer) signalledBefore(ts int64) bool {
	return d.listed != nil && d.listed.signalledBefore(ts)
}
