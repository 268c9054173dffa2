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

// stop is one graceful stop of a container: the drain of every process but init, then the stop
// signal to init.
type stop struct {
	id      string
	signal  unix.Signal // the stop signal that was requested
	init    *process.Handle
	drainer *process.Drainer
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
}

// StopReport is what one stop did, written to the shim's log.
type StopReport struct {
	ContainerID string          `json:"container_id"`
	Requested   string          `json:"requested_signal"`
	InitSignal  string          `json:"init_signal,omitempty"`
	InitNote    string          `json:"init_note,omitempty"`
	Drain       *process.Report `json:"drain"`
}

// beginStop starts a graceful stop of the container whose init is pid: every other process of the
// container gets the drain signal before it returns.
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
	return &stop{
		id:      id,
		signal:  sig,
		init:    init,
		drainer: process.StartDrain(scope, process.DrainConfig{Signal: policy.DrainSignal, Grace: policy.GracePeriod}),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
	}, nil
}

// finish waits for the drain, then delivers the stop signal to init, and logs the report.
func (s *stop) finish() {
	defer close(s.done)
	defer s.init.Close()
	report := &StopReport{ContainerID: s.id, Requested: process.SignalName(s.signal)}
	report.Drain = s.drainer.Finish(s.ctx)
	if s.ctx.Err() == nil {
		report.InitSignal, report.InitNote = s.signalInit()
	} else {
		report.InitNote = "stop aborted by SIGKILL"
	}
	logReport(report)
}

// signalInit delivers the requested stop signal to init, or SIGKILL when init would drop it (PID 1
// of a namespace without a handler) or ignores it, so that the stop completes.
func (s *stop) signalInit() (signal, note string) {
	sig := s.signal
	st, err := process.ReadStatus(s.init.Pid)
	if err == nil && st.State != 'Z' {
		handles, _ := process.WillHandle(s.init.Pid, sig)
		switch {
		case !handles && st.NamespaceInit():
			sig, note = unix.SIGKILL, fmt.Sprintf("init has no %s handler and, as PID 1, would drop it", process.SignalName(s.signal))
		case !handles && st.Ignores(sig):
			sig, note = unix.SIGKILL, fmt.Sprintf("init ignores %s", process.SignalName(s.signal))
		}
	}
	if err := s.init.Signal(sig); err != nil {
		if errors.Is(err, process.ErrGone) {
			return "", "init had already exited"
		}
		return "", err.Error()
	}
	return process.SignalName(sig), note
}

// abort ends the drain at once (the container is being SIGKILLed).
func (s *stop) abort() { s.cancel() }

func logReport(r *StopReport) {
	d := r.Drain
	data, _ := json.Marshal(r)
	log.L.WithFields(log.Fields{
		"id":            r.ContainerID,
		"processes":     len(d.Processes),
		"exited":        d.Count(process.ExitedAfterSignal) + d.Count(process.AlreadyExited),
		"killed":        d.Count(process.Killed),
		"drain":         d.Duration.Round(time.Millisecond).String(),
		"init_signal":   r.InitSignal,
		"grace_expired": d.GraceExpired,
		"report":        string(data),
	}).Info("graceful stop")
}
