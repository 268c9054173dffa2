package process

import (
	"errors"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Signalling at once: with a Signaller (DrainConfig.Signaller) and a container in a PID namespace
// of its own, the members listed from the container's cgroup get the drain signal all at once,
// from inside the namespace (kill(-1)), and are followed without a pidfd each by a listFollower:
// the drain re-reads cgroup.procs, where a process that has exited is no longer listed. This
// costs the shim a fraction of a microsecond per member instead of a pidfd, a namespace check, two
// signals and a close, so that the stop's cost stays close to the kernel's own zap.
//
// A member's lifecycle is then listed → tracked → ended: one still listed when the list stops
// shrinking, and every one at the grace period's end, is examined: confirmed as a member (a
// process of the cgroup outside the namespace is dropped, unsignalled and uncounted) and tracked
// with a pidfd from then on, as a sweep's. So a nested namespace's init that dropped the signal is
// found and deferred as before. Members outside the cgroup (a process that entered by setns, or
// was moved out) are reached by kill(-1) all the same; the sweeps and the full pass find and track
// them. Should the signaller fail, every listed member is examined and signalled one by one.

// listFollower follows the listed members of a drain that signals at once through the container's
// cgroup.procs and task count.
type listFollower struct {
	scope   *Scope
	members map[int]*listedMember
	// win is when the members were signalled (zero until they are).
	win SignalWindow
	// polled is the last poll; gen counts the reads of the list, and buf is their buffer.
	polled time.Time
	gen    uint32
	buf    []int
	// count is the container's task count (pids.current) at the last poll, and base the tasks
	// that were no listed member at the last read of the list (see due).
	count, base int
	// handles counts the detailed members' open pidfds and handlePids lists them (with some
	// ended since, dropped at the next poll); endedSince counts those seen ended through them
	// since the last read of the list; pollFds is poll's buffer.
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
	// h is a pidfd on a detailed member (nil: none), polled at each poll so that its report
	// entry says when it ended to within a poll, without a read of the whole list.
	h *Handle
}

// pollMin and pollMax bound the interval between two polls; within them it is pollPerMember per
// member left. A poll reads the container's task count (pids.current: one integer) and polls the
// detailed members' pidfds, and reads cgroup.procs only when the count says so (see due): the list
// costs about 0.65 µs a member to read on a quiet machine (cgroup v1 builds and sorts it at each
// open, under the lock that every exiting task of the cgroup takes too), several times that while
// thousands exit, which is when a drain polls.
const (
	pollMin       = 500 * time.Microsecond
	pollMax       = 20 * time.Millisecond
	pollPerMember = 2 * time.Microsecond
)

// read reads the container's cgroup.procs and marks the members it lists as seen by a new read
// (gen). It returns an error when the list cannot be read: one wrapping fs.ErrNotExist when the
// cgroup is gone.
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

// unlisted returns the members that the last read of the list did not show.
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

// closeHandle closes m's pidfd, if any.
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

// interval is the time between two polls for the members left.
func (f *listFollower) interval() time.Duration {
	return min(max(time.Duration(f.left())*pollPerMember, pollMin), pollMax)
}

// due reads the container's task count and reports whether cgroup.procs is to be read now. It is
// not while the count keeps falling (the members are exiting, as they should) and stays above the
// tasks that were no listed member (init, a helper, a member's own new process): so a drain reads
// the list a few times in all instead of at every poll, as soon as the count says that the members
// are gone or have stopped exiting (a zombie still counts, but is not listed). Without a count (no
// pids controller), the list is read at every poll.
//
// stalled says that the count has stopped falling (or that there is no count to tell): only then
// does a read that shows no end make the drain examine the members left one by one. A count that
// only reached the floor (tasks that were no member, or a member's threads, have gone too) just
// has the list read again.
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

// left estimates the members left: those of the last read of the list, fewer by what the task
// count has lost since (see due).
func (f *listFollower) left() int {
	if f.count == 0 {
		return len(f.members)
	}
	return min(len(f.members), max(f.count-f.base, 1))
}

// signalledBefore reports whether a process created at ts (CLOCK_MONOTONIC) got the signal at
// once: it existed before the signaller's kill(-1). One created later needs no signal from the
// drain either: kill(-1) walks the task list under tasklist_lock, which a fork takes to add its
// child, so a child created once kill(-1) had begun was either there before the walk (and
// reached) or forked after the walk had signalled its parent (and, as under a drain member by
// member, left alone: a TERM handler's own cleanup command must not be TERMed).
func (f *listFollower) signalledBefore(ts int64) bool {
	return f.win.From != 0 && ts < f.win.From
}

// prepareList lists the members from the container's cgroup and starts reading the commands of
// the first of them, for a drain that signals them at once (signalAtOnce). It does nothing when
// signalling at once does not apply.
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

// cgroupList lists what a drain that signals at once follows: the processes of the container's
// cgroup and of the cgroups below it, unconfirmed (the signaller's kill(-1) reaches exactly the
// members; one listed that is not is dropped when examined). ok is false when there is no cgroup
// to list.
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

// openDetailedHandles opens a pidfd on each detailed listed member, confirmed as a member, once
// the signal is out (the opens are not on the way to it): one already gone ended after the
// signal, since the list read just before the signal showed it; one that is no member (its PID
// was recycled outside) keeps no pidfd, and the list's reads decide its end.
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

// endExitedHandles ends, with outcome o, the detailed listed members whose pidfd says they have
// exited.
func (d *Drainer) endExitedHandles(o Outcome) {
	for _, pid := range d.listed.exitedHandles() {
		d.endListed(pid, o)
		d.listed.endedSince++
	}
}

// signalAtOnce starts a prepared drain that signals at once: the list is read again (a member gone
// since it was prepared exited before the signal; one new is added), then every member is
// signalled at once. It returns false when the drain does not signal at once; the caller then
// sweeps as usual.
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
	// init's and the shim's children outside the cgroup, if any, are tracked; kill(-1) reaches
	// them too. They are read before the signal: after it, init has every orphan as a child.
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
	// Finished entries are kept for every member (a zombie is still listed as init's child): do
	// not scan the process table to prune them while the members end.
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
	// The list was read just before the signal: the task count now is the base against which the
	// polls see the members go, without reading the list again until the count says so.
	if n, ok := d.scope.taskCount(); ok {
		d.listed.count, d.listed.base = n, n-len(d.listed.members)
	}
	d.openDetailedHandles()
	d.listed.polled = time.Time{} // the first poll is due at once
	return true
}

// ownChildren lists the shim's children and, with init, init's: with the cgroup, the candidates
// of a drain that signals at once.
func (d *Drainer) ownChildren(init bool) []int {
	var pids []int
	if init {
		pids = appendChildren(pids, d.scope.Init)
	}
	return appendChildren(pids, os.Getpid())
}

// known reports whether pid is init, the signaller, or a process that the drain follows or has
// seen exit.
func (d *Drainer) known(pid int) bool {
	if d.skipped(pid) || d.isListed(pid) || d.active[pid] != nil {
		return true
	}
	_, ok := d.finished[pid]
	return ok
}

// isListed reports whether pid is a listed member.
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

// pollListed re-reads cgroup.procs when it is due: a listed member no longer listed has exited.
// When the list has stopped shrinking, the members left are examined (see examineListed). It
// returns the time until the next poll (0 when no listed member is left).
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

// endUnlisted reads the list again and ends the members it no longer lists (exited after the
// signal; when the cgroup is gone, so is everything of it). A read that fails otherwise (too many
// open files, no memory) ends nobody: it says nothing of the members, which are followed on, and
// is noted once. It returns how many ended since the list's last read, those seen through their
// pidfds included, and takes the base of the task count anew.
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

// examineListed tracks every listed member left with a pidfd, as a sweep would (signalled tells
// whether the signal at once reached them), once it is confirmed as a member: one that is not is
// dropped from the report, one that has exited meanwhile is counted. It returns those it tracks.
func (d *Drainer) examineListed(signalled bool) []*trackedMember {
	if d.listed == nil {
		return nil
	}
	// A detailed member's pidfd tells first whether it has exited: its PID is not to be opened
	// anew (it may be another process's by now).
	o := AlreadyExited
	if signalled {
		o = ExitedAfterSignal
	}
	d.endExitedHandles(o)
	var tracks []*trackedMember
	for pid, m := range d.listed.members {
		t, err := d.openDetailed(pid, d.cfg.Signal, m.detail)
		if err != nil && !errors.Is(err, ErrNotMember) && !errors.Is(err, errExited) && !errors.Is(err, ErrGone) {
			// Not opened (too many open files, say), which says nothing of its end: it stays
			// listed, followed through the list, and is examined again later.
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

// endListed records that listed member pid ended with outcome o.
func (d *Drainer) endListed(pid int, o Outcome) {
	if m := d.listed.remove(pid); m != nil {
		d.endedListed(pid, m, o)
	}
}

// endedListed records the end of m, the member pid no longer followed, with outcome o: signalled
// (if at all) at once.
func (d *Drainer) endedListed(pid int, m *listedMember, o Outcome) {
	d.recordEnd(m.detail, o)
	d.finished[pid] = finishedPid{gen: d.gen, sigAt: d.listed.win.From}
}

// listedLeft is how many listed members the drain still follows.
func (d *Drainer) listedLeft() int {
	if d.listed == nil {
		return 0
	}
	return len(d.listed.members)
}

// atOnceAt is when the signal at once began (CLOCK_MONOTONIC), 0 if the drain did not signal at
// once.
func (d *Drainer) atOnceAt() int64 {
	if d.listed == nil {
		return 0
	}
	return d.listed.win.From
}

// signalledBefore reports whether a process created at ts got the signal at once (see
// listFollower.signalledBefore).
func (d *Drainer) signalledBefore(ts int64) bool {
	return d.listed != nil && d.listed.signalledBefore(ts)
}
