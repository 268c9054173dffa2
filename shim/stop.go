package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// stop is one graceful stop: decideStop (plan.go) picks the Strategy and a runner carries it out.
type stop struct {
	id       string
	workload *Workload   // nil outside Kubernetes
	signal   unix.Signal // the stop signal that was requested
	policy   Policy
	order    StopOrder // the plan's order, "" when forwarded
	// inProgress is the order Kill sees (under the service's lock): starting until begin returns.
	inProgress StopOrder
	init       *process.Handle
	scope      *process.Scope
	runner     runner
	started    time.Time
	notes      []string
	initSignal string // what init was sent
	// initDisposition is how init's treatment of the stop signal was read before the stop.
	initDisposition string
	// tracerStart is how long the tracer took to start, for an init-first stop.
	tracerStart time.Duration
	// initAutoreap: the held init ignored SIGCHLD, so its children released themselves.
	initAutoreap bool
	// graceCut: the drain's grace was cut to end before kubelet's SIGKILL (drainGrace).
	graceCut bool
	// tracerFailed: the tracer that was to hold init could not attach.
	tracerFailed bool
	profile      func() // stops the CPU profile, if any
	// signaller signals the whole PID namespace at once for the drain (nil: member by member).
	signaller *signaller
	// exitPublished is closed once the container's exit event has gone out (nil: not known).
	exitPublished <-chan struct{}
	ctx           context.Context
	cancel        context.CancelFunc
	aborted       atomic.Bool
	// settled is closed once the stop has begun or was given up (forwarded); see settle.
	settled    chan struct{}
	settleOnce sync.Once
	began      bool
	// discarded is closed once a tracer the stop did not use is gone (nil: none).
	discarded <-chan struct{}
}

// settle records, once, whether the claimed stop began: one given up before (forwarded) leaves a
// main process's exit under graceful-init to the main-exit drain.
func (s *stop) settle(began bool) {
	s.settleOnce.Do(func() {
		s.began = began
		close(s.settled)
	})
}

// runner carries out a started stop's Strategy.
type runner interface {
	// finish waits for the stop to end (or ctx) and returns the drain's report, nil if none ran.
	finish(s *stop) *process.Report
	// close frees what the runner holds.
	close()
}

// StopReport is what one stop did, written to the shim's log and published on StopEventTopic.
type StopReport struct {
	ContainerID string    `json:"container_id"`
	Requested   string    `json:"requested_signal,omitempty"` // none after the main process's own exit
	GracePeriod string    `json:"grace_period"`
	Order       StopOrder `json:"order"`
	InitSignal  string    `json:"init_signal,omitempty"`
	// InitDisposition is how init treated the requested signal when the stop began: caught,
	// sigwait, signalfd, blocked, ignored, drops (PID 1 without any of these) or default.
	InitDisposition string   `json:"init_disposition,omitempty"`
	Notes           []string `json:"notes,omitempty"`
	// TracerStart is how long the init-first tracer took to start and trace init.
	TracerStart time.Duration `json:"tracer_start_ns,omitempty"`
	// InitAutoreap: the held init had been made to ignore SIGCHLD, so dying children self-reaped.
	InitAutoreap bool `json:"init_autoreap,omitempty"`
	// GraceCut: the grace period was cut to end before kubelet's SIGKILL (see Notes).
	GraceCut bool `json:"grace_cut,omitempty"`
	// TracerFailed: the tracer meant to hold init at its exit could not attach (see Notes).
	TracerFailed bool `json:"tracer_failed,omitempty"`
	// Kubernetes names the container's pod when CRI created it.
	Kubernetes *Workload       `json:"kubernetes,omitempty"`
	Drain      *process.Report `json:"drain,omitempty"`

	// encoded is the report in JSON (see encode).
	encoded []byte
}

func (r *StopReport) encode() []byte {
	if r.encoded == nil {
		r.encoded, _ = json.Marshal(r)
	}
	return r.encoded
}

// newStop claims a stop of container id (workload: its pod, nil outside Kubernetes): it does
// nothing yet, but a SIGKILL can already abort it.
func newStop(id string, workload *Workload, sig unix.Signal, policy Policy) *stop {
	ctx, cancel := context.WithCancel(context.Background())
	return &stop{id: id, workload: workload, signal: sig, policy: policy, inProgress: starting, started: time.Now(),
		ctx: ctx, cancel: cancel, profile: func() {}, settled: make(chan struct{})}
}

// begin starts the stop of the container whose init is pid, following its plan. It returns false,
// with the stop closed and report to publish, when the Kill is to be forwarded to init unchanged.
// mainExit, if not nil, is closed when the main process under graceful-init exits.
func (s *stop) begin(pid int, mainExit <-chan struct{}) (started bool, report *StopReport) {
	if err := s.open(pid); err != nil {
		s.note("cannot drain, the signal was forwarded: %v", err)
		return false, s.closeForwarded()
	}
	st, err := process.ReadStatus(pid)
	if err != nil {
		s.note("cannot read init %d, the signal was forwarded: %v", pid, err)
		return false, s.closeForwarded()
	}
	// The tracer takes milliseconds to start: start it first, aside, if the plan may hold init.
	var tracer <-chan attachedTracer
	if mayHold(s.policy, st.NamespaceInit(), mainExit != nil) {
		tracer = startTracer(s.init)
	}
	status, err := observeInit(pid, st, s.signal)
	if err != nil {
		s.discard(tracer)
		s.note("cannot read init %d, the signal was forwarded: %v", pid, err)
		return false, s.closeForwarded()
	}
	status.InjectedInit = mainExit != nil
	s.initDisposition = reportedDisposition(status)
	plan := decideStop(s.policy, s.signal, status)
	if plan.Strategy == HoldInitThenDrain || plan.Strategy == DrainThenInit {
		// Started first, so that it gets ready while the tracer starts and init exits.
		s.startSignaller()
	}
	var h *hold
	var begun *process.ForkWatch
	switch plan.Strategy {
	case HoldInitThenDrain:
		// Watch forks from before init's signal, so that what a handler starts when init passes
		// it on (tini -g) is spared the drain signal; made while the tracer attaches.
		begun, _ = process.NewForkWatch()
		if h, err = awaitTracer(tracer); err != nil {
			s.tracerFailed = true
			status.TracerFailed = err
			plan = decideStop(s.policy, s.signal, status)
			if plan.Strategy == DrainThenInit {
				tracer = nil // it failed: children-first runs without it
			}
		}
	case DrainThenInit:
		// beginChildrenFirst takes it.
	default:
		s.discard(tracer)
	}
	s.order = plan.Order
	s.notes = append(s.notes, plan.Notes...)
	s.profile = startProfile(s.id)
	if h != nil {
		s.tracerStart = h.startup
		s.runner = &holdInitThenDrain{hold: h, begun: begun}
		// A SIGKILL (abort) ends the tracer, which lets a held init finish exiting.
		context.AfterFunc(s.ctx, h.abort)
	} else if begun != nil {
		begun.Close() // the tracer failed: no init-first drain
	}
	if plan.Strategy == DrainThenInit {
		return s.beginChildrenFirst(status, tracer)
	}
	if s.ctx.Err() != nil {
		s.note("stop aborted by SIGKILL before it began")
		return false, s.closeForwarded()
	}
	switch plan.Strategy {
	case ForwardOnly:
		return false, s.closeForwarded()
	case HoldInitThenDrain:
		if begun != nil {
			begun.MarkNow() // the late window starts with init's signal, not with the watch
		}
		s.signalInit(status)
	case SignalInitAwaitMain:
		s.runner = &awaitMainThenDrain{mainExit: mainExit}
		s.signalInit(status)
	}
	return true, nil
}

// beginChildrenFirst starts a children-first drain. When init is PID 1 of the container's own
// namespace the drain starts once the tracer has attached, so that init exiting by itself is held
// until the drain ends, and the kernel does not zap a member still in its handler.
func (s *stop) beginChildrenFirst(status InitStatus, tracer <-chan attachedTracer) (bool, *StopReport) {
	d := &drainThenInit{thenInit: true}
	s.runner = d
	if !holdsDuringDrain(status) || tracer == nil {
		s.discard(tracer)
		if s.ctx.Err() != nil {
			s.note("stop aborted by SIGKILL before it began")
			return false, s.closeForwarded()
		}
		d.drainer = s.startDrain(process.PrepareDrain(s.scope, s.drainConfig()))
		return true, nil
	}
	drainer := process.PrepareDrain(s.scope, s.drainConfig())
	if h, err := awaitTracer(tracer); err != nil {
		s.tracerFailed = true
		s.note("cannot hold init's exit during the drain (init exiting by itself would let the kernel kill the rest): %v", err)
	} else {
		d.hold, s.tracerStart = h, h.startup
		context.AfterFunc(s.ctx, h.abort)
	}
	if s.ctx.Err() != nil {
		drainer.Close()
		s.note("stop aborted by SIGKILL before it began")
		return false, s.closeForwarded()
	}
	d.drainer = s.startDrain(drainer)
	return true, nil
}

// beginMainExit starts the drain that follows the main process's own exit under graceful-init
// (pid). It returns false, with nothing to report, when the container is already gone.
func (s *stop) beginMainExit(pid int) bool {
	if err := s.open(pid); err != nil || s.init.Exited() {
		s.close()
		return false
	}
	plan := decideMainExit()
	s.order = plan.Order
	s.profile = startProfile(s.id)
	s.startSignaller()
	s.runner = &drainThenInit{drainer: s.startDrain(process.PrepareDrain(s.scope, s.drainConfig()))}
	return true
}

// open takes a pidfd on init and finds the container's processes.
func (s *stop) open(pid int) error {
	init, err := process.Open(pid)
	if err != nil {
		return fmt.Errorf("open init %d: %w", pid, err)
	}
	scope, err := process.ScopeOf(pid)
	if err == nil {
		err = checkShimChild(pid)
	}
	if err == nil {
		// The process the pidfd refers to was alive after its scope and parent were read, so
		// they are its own, not those of a process that got its PID later.
		err = init.Signal(0)
	}
	if err != nil {
		if scope != nil {
			scope.Close()
		}
		init.Close()
		return fmt.Errorf("find the processes of init %d: %w", pid, err)
	}
	s.init, s.scope = init, scope
	return nil
}

// checkShimChild checks that pid is this shim's child, as a container's init is (the shim is its
// subreaper). The PID came from runc's state: if init was reaped since, the PID may be another
// process's, even another container's init, which a drain must never touch.
func checkShimChild(pid int) error {
	st, err := process.ReadStatus(pid)
	if err != nil {
		return err
	}
	if st.PPid != os.Getpid() {
		return fmt.Errorf("process %d is not this shim's child (its parent is %d): init has exited and its PID went to another process", pid, st.PPid)
	}
	return nil
}

// drainThenInit runs DrainThenInit: every process but init is drained, then init gets the stop
// signal unless thenInit is false (the drain after the main process's exit).
type drainThenInit struct {
	drainer  *process.Drainer
	thenInit bool
	// hold, if not nil, holds init at its exit should it exit by itself during the drain.
	hold *hold
}

func (d *drainThenInit) finish(s *stop) *process.Report {
	drain := d.drainer.Finish(s.ctx)
	s.closeSignaller()
	if d.hold != nil {
		select {
		case <-d.hold.exiting:
			s.note("init exited by itself during the drain: it was held at its exit until the drain ended")
			s.initAutoreap = d.hold.autoreap
		default:
		}
		if s.ctx.Err() == nil {
			// Release before init is signalled: a tracer still there would follow init to its
			// exit at two ptrace stops a syscall.
			d.hold.Release()
		}
	}
	if d.thenInit && s.ctx.Err() == nil {
		if status, err := observeRunningInit(s.init.Pid, s.signal); err == nil {
			s.signalInit(status)
		} else {
			s.signalInit(InitStatus{Handles: true}) // init is gone or unreadable: the signal as is
		}
	}
	return drain
}

func (d *drainThenInit) close() {
	if d.hold != nil {
		d.hold.kill()
	}
}

// holdInitThenDrain runs the init-first Strategy (HoldInitThenDrain): init, traced, has been
// signalled; when it starts to exit it is held there while the rest is drained, then released.
type holdInitThenDrain struct {
	hold *hold
	// begun watches forks from just before init's signal; the drain takes it over.
	begun *process.ForkWatch
}

func (h *holdInitThenDrain) finish(s *stop) *process.Report {
	// The drain is prepared (its members listed, their commands read) while init exits.
	cfg := s.drainConfig()
	cfg.Begun, h.begun = h.begun, nil
	drainer := process.PrepareDrain(s.scope, cfg)
	select {
	case <-h.hold.exiting:
		// init is held in its exit: drain the rest (at once done when nothing is left).
		s.initAutoreap = h.hold.autoreap
		if f := h.hold.autoreapFailure; f != "" {
			s.note("init's children could not be made to release themselves (they wait for the kernel's reap): %s", f)
		}
		drain := s.startDrain(drainer).Finish(s.ctx)
		s.closeSignaller()
		if s.ctx.Err() == nil {
			h.hold.Release()
		}
		return drain
	case <-h.hold.done:
		s.tracerFailed = true
		s.note("the tracer ended before init exited: init was released")
	case <-s.ctx.Done():
	}
	drainer.Close()
	return nil
}

func (h *holdInitThenDrain) close() {
	h.hold.kill()
	if h.begun != nil {
		h.begun.Close()
		h.begun = nil
	}
}

// awaitMainThenDrain is init-first under graceful-init: once the main process exits, the rest is
// drained while graceful-init, which exits only once alone, holds the namespace open.
type awaitMainThenDrain struct{ mainExit <-chan struct{} }

func (a *awaitMainThenDrain) finish(s *stop) *process.Report {
	select {
	case <-a.mainExit:
		s.startSignaller()
		return s.startDrain(process.PrepareDrain(s.scope, s.drainConfig())).Finish(s.ctx)
	case <-s.ctx.Done():
		return nil
	}
}

func (a *awaitMainThenDrain) close() {}

// drainConfig is the drain's signals, signaller and end bounds (plan.go).
func (s *stop) drainConfig() process.DrainConfig {
	cfg := process.DrainConfig{Signal: s.policy.DrainSignal, StopSignal: s.policy.DrainStopSignal(s.signal),
		KillWait: killWait, KillSweeps: killSweeps}
	if s.signaller != nil {
		cfg.Signaller = s.signaller
	}
	return cfg
}

// startDrain starts a prepared drain with its grace period (drainGrace) as of now.
func (s *stop) startDrain(d *process.Drainer) *process.Drainer {
	grace, note := drainGrace(s.policy, time.Since(s.started))
	if note != "" {
		s.graceCut = true
		s.note("%s", note)
	}
	return d.Start(grace)
}

// startSignaller starts the process that signals the whole PID namespace at once when
// decideSignalling (plan.go) says so; without it the drain goes member by member.
func (s *stop) startSignaller() {
	ns := s.scope.Namespace()
	if ns == 0 || s.signaller != nil {
		return
	}
	atOnce, note := decideSignalling(s.policy, s.signal, s.scopeFacts())
	if note != "" {
		s.note("%s", note)
	}
	if atOnce {
		s.signaller = startSignaller(s.init, ns)
	}
}

// scopeFacts reads what decideSignalling needs of the container and the host.
func (s *stop) scopeFacts() ScopeFacts {
	f := ScopeFacts{CanSignalAtOnce: s.scope.CanSignalAtOnce()}
	if !f.CanSignalAtOnce {
		return f
	}
	if f.Size, f.SizeKnown = s.scope.Size(); f.SizeKnown {
		f.HostTasks, _ = process.HostTasks()
	}
	return f
}

func (s *stop) closeSignaller() {
	if s.signaller != nil {
		s.signaller.close()
		s.signaller = nil
	}
}

// finish completes a started stop, logs its report and returns it.
func (s *stop) finish() *StopReport {
	defer s.close()
	drain := s.runner.finish(s)
	// Aborted only if the SIGKILL (or Delete) came before the drain was over.
	if s.ctx.Err() != nil && (drain == nil || drain.Cancelled) {
		s.note("stop aborted by SIGKILL")
	}
	// The report would compete with init's exit for the CPUs and with the exit event: wait,
	// briefly, for that event to go out (or, where that is not known, for init's exit).
	s.awaitExitEvent()
	return s.log(drain)
}

// awaitExitEvent waits up to reportDelay for the container's exit event to be published, and up
// to lateExitEventDelay more once init has exited, so that the report follows the exit event.
func (s *stop) awaitExitEvent() {
	if s.exitPublished == nil {
		s.init.WaitExit(reportDelay)
		return
	}
	timer := time.NewTimer(reportDelay)
	defer timer.Stop()
	select {
	case <-s.exitPublished:
		return
	case <-timer.C:
	}
	if !s.init.Exited() {
		return // init lives on: no exit event to wait for
	}
	// init has exited and its exit event is on its way (the runc service is slow to handle
	// the exit on a loaded machine).
	late := time.NewTimer(lateExitEventDelay)
	defer late.Stop()
	select {
	case <-s.exitPublished:
	case <-late.C:
		log.L.WithField("id", s.id).Warnf("graceful: no exit event published %v after init's exit; the stop report goes first",
			reportDelay+lateExitEventDelay)
	}
}

const (
	// reportDelay bounds how long a stop's report waits for init's exit and its exit event.
	reportDelay = 500 * time.Millisecond
	// lateExitEventDelay bounds the further wait for the exit event of an init that has exited.
	lateExitEventDelay = 2 * time.Second
)

// discard ends a tracer that the stop will not use (see discardTracer).
func (s *stop) discard(tracer <-chan attachedTracer) {
	if tracer != nil {
		s.discarded = discardTracer(tracer)
	}
}

// awaitDiscarded waits, before anything signals init, until a discarded tracer is gone: bounded
// by holdAttachTimeout and holdKillAfter.
func (s *stop) awaitDiscarded() {
	if s.discarded != nil {
		<-s.discarded
		s.discarded = nil
	}
}

// signalInit delivers to init what initSignal decides for the requested signal.
func (s *stop) signalInit(status InitStatus) {
	s.awaitDiscarded()
	sig, why := initSignal(s.signal, status)
	if why != "" {
		s.note("%s", why)
	}
	if err := s.init.Signal(sig); err != nil {
		if errors.Is(err, process.ErrGone) {
			s.note("init had already exited")
		} else {
			s.note("signal init: %v", err)
		}
		return
	}
	s.initSignal = process.SignalName(sig)
}

// abort ends the stop at once (SIGKILL or Delete): the drain stops waiting, a held init is let go.
func (s *stop) abort() {
	s.aborted.Store(true)
	s.cancel()
}

func (s *stop) note(format string, args ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, args...))
}

// closeForwarded closes a stop that forwards the signal instead, and returns its report.
func (s *stop) closeForwarded() *StopReport {
	s.order = ""
	s.awaitDiscarded() // the Kill is forwarded to init next
	defer s.close()
	return s.log(nil)
}

func (s *stop) close() {
	s.profile()
	s.closeSignaller()
	if s.runner != nil {
		s.runner.close()
	}
	if s.init != nil {
		s.init.Close()
	}
	if s.scope != nil {
		s.scope.Close()
	}
	s.cancel()
}

func (s *stop) log(drain *process.Report) *StopReport {
	requested := ""
	if s.signal != 0 {
		requested = process.SignalName(s.signal)
	}
	r := &StopReport{ContainerID: s.id, Requested: requested, GracePeriod: s.policy.GracePeriod.String(),
		Order: s.order, InitSignal: s.initSignal, InitDisposition: s.initDisposition, Notes: s.notes,
		TracerStart: s.tracerStart, InitAutoreap: s.initAutoreap, GraceCut: s.graceCut,
		TracerFailed: s.tracerFailed, Kubernetes: s.workload, Drain: drain}
	fields := log.Fields{"id": r.ContainerID, "order": r.Order, "init_signal": r.InitSignal, "init_disposition": r.InitDisposition, "report": string(r.encode())}
	if drain != nil {
		fields["processes"] = len(drain.Processes)
		fields["exited"] = drain.Count(process.ExitedAfterSignal) + drain.Count(process.ExitedUnsignalled) + drain.Count(process.AlreadyExited)
		fields["killed"] = drain.Count(process.Killed)
		fields["drain"] = drain.Duration.Round(time.Millisecond).String()
		fields["grace_expired"] = drain.GraceExpired
	}
	log.L.WithFields(fields).Info("graceful stop")
	return r
}
