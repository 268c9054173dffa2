package process

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The bulk drain: with a Signaller (DrainConfig.Signaller) and a container in a PID namespace of
// its own, the members listed from the container's cgroup get the drain signal all at once, from
// inside the namespace (kill(-1)), and are followed without a pidfd each: the drain re-reads
// cgroup.procs, where a process that has exited is no longer listed. This costs the shim a
// fraction of a microsecond per member instead of a pidfd, a namespace check, two signals and a
// close, so that the stop's cost stays close to the kernel's own zap.
//
// A member that is still there when the list stops shrinking, and every member at the grace
// period's end, is examined: confirmed as a member (a process of the cgroup outside the
// namespace is dropped, unsignalled and uncounted) and tracked with a pidfd from then on, as a
// sweep's. So a nested namespace's init that dropped the signal is found and deferred as before.
// Members outside the cgroup (a process that entered by setns, or was moved out) are reached by
// kill(-1) all the same; the sweeps and the full pass find and track them.
//
// Should the signaller fail, every listed member is examined and signalled one by one instead.

// bulkMember is a member followed through cgroup.procs.
type bulkMember struct {
	detail int    // index in Report.Processes, -1 when the process is only counted
	seen   uint32 // the last poll that listed it
	// h is a pidfd on a detailed member (nil: none), polled at each poll so that its report
	// entry says when it ended to within a poll, without a read of the whole list.
	h *Handle
}

// bulkPollMin and bulkPollMax bound the interval between two polls; within them it is
// bulkPollPerMember per member left. A poll reads the container's task count (pids.current: one
// integer) and polls the detailed members' pidfds, and reads cgroup.procs only when the count says
// so (see listDue): the list costs about 0.65 µs a member to read on a quiet machine (cgroup v1
// builds and sorts it at each open, under the lock that every exiting task of the cgroup takes
// too), several times that while thousands exit, which is when a drain polls.
const (
	bulkPollMin       = 500 * time.Microsecond
	bulkPollMax       = 20 * time.Millisecond
	bulkPollPerMember = 2 * time.Microsecond
)

// prepareBulk lists the members from the container's cgroup and starts reading the commands of
// the first of them, for a drain that signals them at once (signalBulk). It does nothing when a
// bulk drain does not apply.
func (d *Drainer) prepareBulk() {
	sig := d.cfg.Signal
	if d.cfg.Signaller == nil || d.scope.Kind != ByPIDNamespace || d.scope.cgroupDir == "" ||
		sig == 0 || sig == unix.SIGKILL || d.cfg.chooses() {
		return
	}
	pids, ok := d.scope.bulkList()
	if !ok {
		return
	}
	d.bulk = make(map[int]*bulkMember, len(pids))
	d.addBulk(pids)
}

// CanSignalAtOnce reports whether a drain of the scope can signal its members at once, with a
// Signaller: the scope is a PID namespace of its own, with a cgroup to list its members from.
func (s *Scope) CanSignalAtOnce() bool {
	return s.Kind == ByPIDNamespace && s.cgroupDir != ""
}

// Size is the number of tasks (threads included) the pids controller counts in the container's
// cgroup, else the number of processes its cgroup.procs lists (ok false when neither can be
// read). The counter is one integer however many tasks: reading cgroup.procs costs about 2 µs a
// process under load.
func (s *Scope) Size() (int, bool) {
	if n, ok := s.taskCount(); ok {
		return n, true
	}
	pids, ok := s.bulkList()
	return len(pids), ok
}

// taskCount is the pids controller's count of the tasks in the container's cgroup and below it
// (ok false without a pids controller): one integer, however many tasks.
func (s *Scope) taskCount() (int, bool) {
	if s.pidsCounter == "" {
		return 0, false
	}
	var buf [32]byte
	data, err := readProcFile(s.pidsCounter, buf[:])
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return n, err == nil
}

// HostTasks is the number of tasks (threads) on the host, from /proc/loadavg's fourth field
// (running/total).
func HostTasks() (int, error) {
	var buf [128]byte
	data, err := readProcFile("/proc/loadavg", buf[:])
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(data))
	if len(fields) < 4 {
		return 0, fmt.Errorf("/proc/loadavg: %q", data)
	}
	_, total, ok := strings.Cut(fields[3], "/")
	if !ok {
		return 0, fmt.Errorf("/proc/loadavg: %q", data)
	}
	return strconv.Atoi(total)
}

// bulkList lists what a bulk drain follows: the processes of the container's cgroup and of the
// cgroups below it, unconfirmed (the signaller's kill(-1) reaches exactly the members; one listed
// that is not is dropped when examined). ok is false when there is no cgroup to list.
func (s *Scope) bulkList() (pids []int, ok bool) {
	if s.cgroupDir == "" {
		return nil, false
	}
	return appendCgroupProcs(nil, s.cgroupDir)
}

// addBulk adds the listed PIDs that are not followed yet as bulk members.
func (d *Drainer) addBulk(pids []int) {
	for _, pid := range pids {
		if !d.known(pid) {
			d.bulk[pid] = &bulkMember{detail: d.newDetail(pid), seen: d.bulkGen}
		}
	}
}

// openDetailedHandles opens a pidfd on each detailed bulk member, confirmed as a member, once the
// bulk signal is out (the opens are not on the way to it): one already gone ended after the
// signal, since the list read just before the signal showed it; one that is no member (its PID
// was recycled outside) keeps no pidfd, and the list's reads decide its end.
func (d *Drainer) openDetailedHandles() {
	for pid, m := range d.bulk {
		if m.detail < 0 {
			continue
		}
		h, _, err := d.scope.openMember(pid)
		switch {
		case errors.Is(err, ErrGone):
			d.endBulk(pid, m, ExitedAfterSignal)
			d.bulkEnded++
		case err == nil:
			m.h = h
			d.bulkHandles++
			d.bulkHandlePids = append(d.bulkHandlePids, pid)
		}
	}
}

// pollDetailed ends, with outcome o, the detailed bulk members whose pidfd says they have exited.
func (d *Drainer) pollDetailed(o Outcome) {
	if d.bulkHandles == 0 {
		return
	}
	fds := d.bulkPollFds[:0]
	pids := d.bulkHandlePids[:0] // compacted to the members whose pidfd is still open
	for _, pid := range d.bulkHandlePids {
		if m := d.bulk[pid]; m != nil && m.h != nil {
			fds = append(fds, unix.PollFd{Fd: int32(m.h.Fd()), Events: unix.POLLIN})
			pids = append(pids, pid)
		}
	}
	d.bulkPollFds, d.bulkHandlePids = fds, pids
	n, err := unix.Poll(fds, 0)
	if err != nil || n <= 0 {
		return
	}
	for i, f := range fds {
		if f.Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
			d.endBulk(pids[i], d.bulk[pids[i]], o)
			d.bulkEnded++
		}
	}
}

// closeBulkHandle closes m's pidfd, if any.
func (d *Drainer) closeBulkHandle(m *bulkMember) {
	if m.h != nil {
		m.h.Close()
		m.h = nil
		d.bulkHandles--
	}
}

// signalBulk starts a prepared bulk drain: the list is read again (a member gone since it was
// prepared exited before the signal; one new is added), then every member is signalled at once.
// It returns false when the drain is not a bulk one; the caller then sweeps as usual.
func (d *Drainer) signalBulk(sig unix.Signal) bool {
	if d.bulk == nil {
		return false
	}
	// The signaller is in the namespace, as the shim's child: it is never a member.
	d.helper = d.cfg.Signaller.Pid()
	if m := d.bulk[d.helper]; m != nil {
		delete(d.bulk, d.helper)
		d.closeBulkHandle(m)
		d.dropDetail(m.detail)
	}
	if pids, err := d.listBulk(); err == nil {
		for pid, m := range d.bulk {
			if m.seen != d.bulkGen {
				d.endBulk(pid, m, AlreadyExited)
			}
		}
		d.addBulk(pids)
	}
	// init's and the shim's children outside the cgroup, if any, are tracked; kill(-1) reaches
	// them too. They are read before the signal: after it, init has every orphan as a child.
	var outside []*tracked
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
	// not scan the process table to prune them while the bulk ends.
	d.pruneAt = max(d.pruneAt, 2*len(d.bulk))
	d.commands.awaitAll()
	win, err := d.cfg.Signaller.SignalAll(sig)
	if err != nil {
		d.report.Notes = append(d.report.Notes, "signalling the namespace at once failed ("+err.Error()+"): the members were signalled one by one")
		d.readLate() // one by one, a handler's new processes are spared
		for _, t := range append(outside, d.examineBulk(false)...) {
			if !t.deferred && !d.spareLate(t.h.Pid, sig) {
				d.signal(t, sig)
			}
		}
		return false // the sweep signals the rest
	}
	d.bulkWin = win
	d.report.Bulk = len(d.bulk)
	for _, m := range d.bulk {
		d.recordDetail(m.detail, sig)
	}
	for _, t := range outside {
		d.markBulkSignalled(t)
	}
	// The list was read just before the signal: the task count now is the base against which the
	// polls see the members go, without reading the list again until the count says so.
	if n, ok := d.scope.taskCount(); ok {
		d.bulkCount, d.bulkBase = n, n-len(d.bulk)
	}
	d.openDetailedHandles()
	d.bulkPolled = time.Time{} // the first poll is due at once
	return true
}

// listBulk reads the container's cgroup.procs and marks the bulk members it lists as seen by a
// new generation (bulkGen). It returns an error when the list cannot be read: one wrapping
// fs.ErrNotExist when the cgroup is gone.
func (d *Drainer) listBulk() ([]int, error) {
	d.bulkGen++
	pids, err := readCgroupTree(d.bulkBuf[:0], d.scope.cgroupDir)
	d.bulkBuf = pids
	if err == nil {
		for _, pid := range pids {
			if m := d.bulk[pid]; m != nil {
				m.seen = d.bulkGen
			}
		}
	}
	return pids, err
}

// ownChildren lists the shim's children and, with init, init's: with the cgroup, the candidates
// of a bulk drain.
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
	if d.skipped(pid) || d.bulk[pid] != nil || d.active[pid] != nil {
		return true
	}
	_, ok := d.finished[pid]
	return ok
}

// markBulkSignalled records that the bulk signal reached the tracked process t.
func (d *Drainer) markBulkSignalled(t *tracked) {
	t.signalled = true
	t.sigAt = d.bulkWin.From
	d.recordDetail(t.detail, d.cfg.Signal)
}

// skipped reports whether pid is never a member to track: init, or the signaller.
func (d *Drainer) skipped(pid int) bool {
	return pid == d.scope.Init || (d.helper > 0 && pid == d.helper)
}

// recordDetail records on detailed entry i (if any) that the drain signal sig reached it, with the
// SIGCONT that follows it.
func (d *Drainer) recordDetail(i int, sig unix.Signal) {
	if i < 0 {
		return
	}
	p := &d.report.Processes[i]
	p.Signals = append(p.Signals, SignalName(sig))
	if sig != unix.SIGKILL && sig != unix.SIGCONT {
		p.Signals = append(p.Signals, SignalName(unix.SIGCONT))
	}
}

// bulkSignalled reports whether a process created at ts (CLOCK_MONOTONIC) got the bulk signal:
// it existed before the signaller's kill(-1). One created later needs no signal from the drain
// either: kill(-1) walks the task list under tasklist_lock, which a fork takes to add its child,
// so a child created once kill(-1) had begun was either there before the walk (and reached) or
// forked after the walk had signalled its parent (and, as under a drain member by member, left
// alone: a TERM handler's own cleanup command must not be TERMed).
func (d *Drainer) bulkSignalled(ts int64) bool {
	return d.bulkWin.From != 0 && ts < d.bulkWin.From
}

// pollBulk re-reads cgroup.procs when it is due: a bulk member no longer listed has exited. When
// the list has stopped shrinking, the members left are examined (see examineBulk). It returns the
// time until the next poll (0 when no bulk member is left).
func (d *Drainer) pollBulk(now time.Time) time.Duration {
	if len(d.bulk) == 0 {
		return 0
	}
	interval := min(max(time.Duration(d.bulkLeft())*bulkPollPerMember, bulkPollMin), bulkPollMax)
	if due := d.bulkPolled.Add(interval); now.Before(due) {
		return due.Sub(now)
	}
	d.bulkPolled = now
	d.pollDetailed(ExitedAfterSignal)
	due, stalled := d.listDue()
	if !due {
		return interval
	}
	if ended := d.endUnlisted(); ended == 0 && stalled {
		// The count stopped falling and the list shows no end since its last read.
		d.examineBulk(true)
	}
	if len(d.bulk) == 0 {
		return 0
	}
	return interval
}

// endUnlisted reads the list again and ends the bulk members it no longer lists (exited after
// the signal; when the cgroup is gone, so is everything of it). A read that fails otherwise (too
// many open files, no memory) ends nobody: it says nothing of the members, which are followed on,
// and is noted once. It returns how many ended since the list's last read, those seen through
// their pidfds included, and takes the base of the task count anew.
func (d *Drainer) endUnlisted() int {
	ended := d.bulkEnded
	d.bulkEnded = 0
	if _, err := d.listBulk(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		if !d.listFailed {
			d.listFailed = true
			d.report.Notes = append(d.report.Notes, "reading the container's process list failed ("+err.Error()+"): its members were followed on, not taken for exited")
		}
		return ended
	}
	for pid, m := range d.bulk {
		if m.seen != d.bulkGen {
			d.endBulk(pid, m, ExitedAfterSignal)
			ended++
		}
	}
	d.bulkBase = d.bulkCount - len(d.bulk)
	return ended
}

// listDue reads the container's task count and reports whether cgroup.procs is to be read now.
// It is not while the count keeps falling (the members are exiting, as they should) and stays
// above the tasks that were no bulk member (init, a helper, a member's own new process): so a
// drain reads the list a few times in all instead of at every poll, as soon as the count says
// that the members are gone or have stopped exiting (a zombie still counts, but is not listed).
// A detailed member's report entry says when it ended to within a poll (its pidfd); the others
// are only counted. Without a count (no pids controller), the list is read at every poll.
//
// stalled says that the count has stopped falling (or that there is no count to tell): only then
// does a read that shows no end make the drain examine the members left one by one. A count that
// only reached the floor (tasks that were no member, or a member's threads, have gone too) just
// has the list read again.
func (d *Drainer) listDue() (due, stalled bool) {
	n, ok := d.scope.taskCount()
	if !ok {
		return true, true
	}
	prev := d.bulkCount
	d.bulkCount = n
	left := n - d.bulkBase
	stalled = prev != 0 && n >= prev
	return prev == 0 || stalled || left <= 0, stalled
}

// bulkLeft estimates the bulk members left: those of the last read of the list, fewer by what
// the task count has lost since (see listDue).
func (d *Drainer) bulkLeft() int {
	if d.bulkCount == 0 {
		return len(d.bulk)
	}
	return min(len(d.bulk), max(d.bulkCount-d.bulkBase, 1))
}

// examineBulk tracks every bulk member left with a pidfd, as a sweep would (signalled tells
// whether the bulk signal reached them), once it is confirmed as a member: one that is not is
// dropped from the report, one that has exited meanwhile is counted. It returns those it tracks.
func (d *Drainer) examineBulk(signalled bool) []*tracked {
	// A detailed member's pidfd tells first whether it has exited: its PID is not to be opened
	// anew (it may be another process's by now).
	o := AlreadyExited
	if signalled {
		o = ExitedAfterSignal
	}
	d.pollDetailed(o)
	var tracks []*tracked
	for pid, m := range d.bulk {
		t, err := d.openDetailed(pid, d.cfg.Signal, m.detail)
		if err != nil && !errors.Is(err, ErrNotMember) && !errors.Is(err, errExited) && !errors.Is(err, ErrGone) {
			// Not opened (too many open files, say), which says nothing of its end: it stays a
			// bulk member, followed through the list, and is examined again later.
			d.noteOpenFailure(err)
			continue
		}
		delete(d.bulk, pid)
		d.closeBulkHandle(m)
		switch {
		case errors.Is(err, ErrNotMember):
			d.dropDetail(m.detail)
		case errors.Is(err, errExited):
			d.end(pid, t, o)
		case err != nil: // ErrGone
			d.endUntracked(pid, m.detail, o)
		default:
			if signalled {
				t.signalled = true
				t.sigAt = d.bulkWin.From
			}
			tracks = append(tracks, t)
		}
	}
	return tracks
}

// noteOpenFailure notes, once, that a member could not be opened for a reason other than its end.
func (d *Drainer) noteOpenFailure(err error) {
	if !d.openFailed {
		d.openFailed = true
		d.report.Notes = append(d.report.Notes, "a member could not be followed through a pidfd ("+err.Error()+"): it was waited for all the same")
	}
}

// endBulk records that bulk member pid ended with outcome o.
func (d *Drainer) endBulk(pid int, m *bulkMember, o Outcome) {
	delete(d.bulk, pid)
	d.closeBulkHandle(m)
	d.endUntracked(pid, m.detail, o)
}

// endUntracked records that pid, which has no pidfd, ended with outcome o.
func (d *Drainer) endUntracked(pid, detail int, o Outcome) {
	d.report.Totals[o]++
	if detail >= 0 {
		p := &d.report.Processes[detail]
		p.Outcome = o
		p.After = time.Since(d.report.Started)
	}
	d.finished[pid] = finishedPid{gen: d.gen, sigAt: d.bulkWin.From}
}

// dropDetail removes detailed entry i from the report (a listed process that was no member);
// the entry is left out when the report is completed.
func (d *Drainer) dropDetail(i int) {
	if i >= 0 {
		d.report.Processes[i].Pid = 0
	} else {
		d.report.Omitted--
	}
}

// remaining is how many members the drain still waits for.
func (d *Drainer) remaining() int { return len(d.active) + len(d.bulk) + len(d.unopened) }
