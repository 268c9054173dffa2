package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// stop is one graceful stop of a container, in one of two orders:
//   - children-first: drain every process but init, then send the stop signal to init;
//   - init-first: hold init's exit (a tracer), send init the stop signal, and when init exits
//     drain what is left before releasing it.
type stop struct {
	id     string
	signal unix.Signal // the stop signal that was requested
	policy Policy
	order  StopOrder // resolved: InitFirst or ChildrenFirst
	init   *process.Handle
	scope  *process.Scope
	// drainer is the drain started by a children-first stop; hold the tracer of an init-first one.
	drainer    *process.Drainer
	hold       *hold
	started    time.Time
	notes      []string
	initSignal string // what init was sent
	profile    func() // stops the CPU profile, if any
	ctx        context.Context
	cancel     context.CancelFunc
	done       chan struct{}
}

// StopReport is what one stop did, written to the shim's log.
type StopReport struct {
	ContainerID string          `json:"container_id"`
	Requested   string          `json:"requested_signal"`
	GracePeriod string          `json:"grace_period"`
	Order       StopOrder       `json:"order"`
	InitSignal  string          `json:"init_signal,omitempty"`
	Notes       []string        `json:"notes,omitempty"`
	Drain       *process.Report `json:"drain,omitempty"`
}

// errForward tells the caller to forward the Kill to the runc service unchanged.
var errForward = errors.New("forward the signal unchanged")

// beginStop starts a graceful stop of the container whose init is pid. A children-first stop has
// signalled every other process when it returns; an init-first one has signalled init.
func beginStop(id string, pid int, sig unix.Signal, policy Policy) (*stop, error) {
	init, err := process.Open(pid)
	if err != nil {
		return nil, fmt.Errorf("open init %d: %w", pid, err)
	}
	scope, err := process.ScopeOf(pid)
	if err == nil {
		// init was alive after its scope was read, so the scope is init's and not a recycled PID's.
		err = init.Signal(0)
	}
	if err != nil {
		init.Close()
		return nil, fmt.Errorf("find the processes of init %d: %w", pid, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &stop{id: id, signal: sig, policy: policy, init: init, scope: scope, started: time.Now(),
		ctx: ctx, cancel: cancel, done: make(chan struct{}), profile: startProfile(id)}

	handles, _ := process.WillHandle(pid, sig)
	s.order = policy.StopOrder
	if s.order == Auto {
		s.order = ChildrenFirst
		if handles {
			s.order = InitFirst
		}
	}
	if s.order == InitFirst {
		if s.hold, err = startHold(init); err == nil {
			s.signalInit()
			return s, nil
		}
		s.note("cannot hold init's exit: %v", err)
		if handles {
			// init will act on the signal itself: give it the signal as the stock shim would.
			s.order = ""
			s.log(nil)
			s.close()
			return nil, errForward
		}
		s.order = ChildrenFirst
	}
	s.drainer = process.StartDrain(scope, s.drainConfig())
	return s, nil
}

// drainConfig is the drain's signal and grace period; the grace is cut short to end within the
// stop budget (Kubernetes' termination grace period less a margin) when there is one.
func (s *stop) drainConfig() process.DrainConfig {
	grace := s.policy.GracePeriod
	if s.policy.StopBudget > 0 {
		if left := max(s.policy.StopBudget-time.Since(s.started), 0); left < grace {
			grace = left
			s.note("grace period cut to %s to end before kubelet's SIGKILL", grace.Round(time.Millisecond))
		}
	}
	return process.DrainConfig{Signal: s.policy.DrainSignal, Grace: grace}
}

// finish completes the stop in the background, logs its report and returns it.
func (s *stop) finish() *StopReport {
	defer s.close()
	var drain *process.Report
	switch s.order {
	case ChildrenFirst:
		drain = s.drainer.Finish(s.ctx)
		if s.ctx.Err() == nil {
			s.signalInit()
		}
	case InitFirst:
		select {
		case <-s.hold.exiting:
			// init is held in its exit: drain the rest (at once done when nothing is left).
			drain = process.StartDrain(s.scope, s.drainConfig()).Finish(s.ctx)
			if s.ctx.Err() == nil {
				s.hold.Release()
			}
		case <-s.hold.done:
			s.note("the tracer ended before init exited: init was released")
		case <-s.ctx.Done():
		}
	}
	if s.ctx.Err() != nil {
		s.note("stop aborted by SIGKILL")
	}
	return s.log(drain)
}

// signalInit delivers the requested stop signal to init, or SIGKILL when init would drop it (PID 1
// of a namespace without a handler) or ignores it, so that the stop completes.
func (s *stop) signalInit() {
	sig := s.signal
	st, err := process.ReadStatus(s.init.Pid)
	if err == nil && st.State != 'Z' {
		handles, _ := process.WillHandle(s.init.Pid, sig)
		switch {
		case !handles && st.NamespaceInit():
			sig = unix.SIGKILL
			s.note("init has no %s handler and, as PID 1, would drop it: sent SIGKILL", process.SignalName(s.signal))
		case !handles && st.Ignores(sig):
			sig = unix.SIGKILL
			s.note("init ignores %s: sent SIGKILL", process.SignalName(s.signal))
		}
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

// abort ends the stop at once (the container is being SIGKILLed): the drain stops waiting and the
// tracer, if any, goes, which lets a held init finish exiting.
func (s *stop) abort() {
	s.cancel()
	if s.hold != nil {
		s.hold.cmd.Process.Kill()
	}
}

func (s *stop) note(format string, args ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, args...))
}

func (s *stop) close() {
	s.profile()
	if s.hold != nil {
		s.hold.kill()
	}
	s.init.Close()
	s.cancel()
	close(s.done)
}

func (s *stop) log(drain *process.Report) *StopReport {
	r := &StopReport{ContainerID: s.id, Requested: process.SignalName(s.signal), GracePeriod: s.policy.GracePeriod.String(), Order: s.order,
		InitSignal: s.initSignal, Notes: s.notes, Drain: drain}
	data, _ := json.Marshal(r)
	fields := log.Fields{"id": r.ContainerID, "order": r.Order, "init_signal": r.InitSignal, "report": string(data)}
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
