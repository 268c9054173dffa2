package process

import (
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Outcome is how one process ended during a drain.
type Outcome string

const (
	// AlreadyExited: the process had exited (a zombie) before it could be signalled.
	AlreadyExited Outcome = "already-exited"
	// ExitedAfterSignal: the process exited within the grace period after the drain signal.
	ExitedAfterSignal Outcome = "exited"
	// ExitedUnsignalled: started during the grace period (a handler's), it exited unsignalled.
	ExitedUnsignalled Outcome = "exited-unsignalled"
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
	Scope  ScopeKind `json:"scope"`
	Signal string    `json:"signal"`
	// StopSignal, if set, went instead of Signal to the members that handle it (see Signals).
	StopSignal   string        `json:"stop_signal,omitempty"`
	Grace        time.Duration `json:"grace_ns"`
	Started      time.Time     `json:"started"`
	Duration     time.Duration `json:"duration_ns"`
	GraceExpired bool          `json:"grace_expired"`
	Cancelled    bool          `json:"cancelled"`
	// Totals counts every process by outcome; Processes details the first MaxDetailed.
	Totals    map[Outcome]int `json:"totals"`
	Processes []ProcessReport `json:"processes"`
	Omitted   int             `json:"omitted,omitempty"`
	// HostScanDone: the full /proc pass finished in time; HostScanFound: members only it found.
	HostScanDone  bool `json:"host_scan_done"`
	HostScanFound int  `json:"host_scan_found,omitempty"`
	// AtOnce is how many cgroup-listed members were signalled at once (DrainConfig.Signaller).
	AtOnce int      `json:"at_once,omitempty"`
	Notes  []string `json:"notes,omitempty"`
}

// MaxDetailed bounds the processes a report details and reads the command of; the rest are counted.
const MaxDetailed = 256

// Count returns how many processes ended with outcome o.
func (r *Report) Count(o Outcome) int {
	if r.Totals != nil {
		return r.Totals[o]
	}
	n := 0
	for _, p := range r.Processes {
		if p.Outcome == o {
			n++
		}
	}
	return n
}

// newDetail makes pid's report entry and returns its index, or -1 (counted only) past MaxDetailed.
func (d *Drainer) newDetail(pid int) int {
	if len(d.report.Processes) >= MaxDetailed {
		d.report.Omitted++
		return -1
	}
	d.report.Processes = append(d.report.Processes, ProcessReport{Pid: pid})
	i := len(d.report.Processes) - 1
	// Read aside (it can block on the target's memory), awaited briefly before the signal.
	d.commands.start(pid, i)
	return i
}

// recordSignal records on entry i (-1: counted only) that sig reached its process.
func (d *Drainer) recordSignal(i int, sig unix.Signal) {
	if i >= 0 {
		p := &d.report.Processes[i]
		p.Signals = append(p.Signals, SignalName(sig))
	}
}

func (d *Drainer) recordDelivered(i int, sig unix.Signal) {
	d.recordSignal(i, sig)
	if continues(sig) {
		d.recordSignal(i, unix.SIGCONT)
	}
}

// continues reports whether sig is followed by SIGCONT, which a stopped process needs to act on it.
func continues(sig unix.Signal) bool { return sig != unix.SIGKILL && sig != unix.SIGCONT }

// dropDetail drops entry i (a listed non-member), left out when the report is completed.
func (d *Drainer) dropDetail(i int) {
	if i >= 0 {
		d.report.Processes[i].Pid = 0
	} else {
		d.report.Omitted--
	}
}

// finish records every process still active with outcome o and completes the report.
func (d *Drainer) finish(o Outcome) *Report {
	d.report.Cancelled = o == Aborted
	for pid, t := range d.active {
		d.end(pid, t, o)
	}
	if d.listed != nil {
		for pid := range d.listed.members {
			d.endListed(pid, o)
		}
	}
	for range d.unopened {
		// Never opened, so never signalled nor killed: the kernel's SIGKILL will end them.
		d.recordEnd(-1, o)
	}
	d.unopened = map[int]unix.Signal{}
	if d.spared > 0 {
		d.report.Notes = append(d.report.Notes, fmt.Sprintf("%d processes created just after init was signalled (a handler's, as far as can be told) were waited for without the drain signal", d.spared))
	}
	d.commands.collect(d.report.Processes)
	// Leave out the entries dropped by dropDetail.
	d.report.Processes = slices.DeleteFunc(d.report.Processes, func(p ProcessReport) bool { return p.Pid == 0 })
	d.report.Duration = time.Since(d.report.Started)
	return d.report
}

// recordEnd records that entry detail's member (-1: counted only) ended with o; all ends come here.
func (d *Drainer) recordEnd(detail int, o Outcome) {
	d.report.Totals[o]++
	if detail >= 0 {
		p := &d.report.Processes[detail]
		p.Outcome = o
		p.After = time.Since(d.report.Started)
	}
}
