package stack

import (
	"context"
	"fmt"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/typeurl/v2"
	"github.com/graceful-shim/graceful/internal/testtime"
)

// Events is a subscription to the daemon's events, from which a test takes the stop reports and
// the exits of its containers.
type Events struct {
	ctx    context.Context
	events <-chan *events.Envelope
	errs   <-chan error
}

// Subscribe subscribes to the daemon's events that match any of filters, for timeout at most
// (scaled by testtime for a slow machine: the kernel VM) and until tb's cleanup.
func (s *Stack) Subscribe(ctx context.Context, tb testing.TB, timeout time.Duration, filters ...string) *Events {
	tb.Helper()
	ctx, cancel := context.WithTimeout(ctx, testtime.Scale(timeout))
	tb.Cleanup(cancel)
	evs, errs := s.Client.Subscribe(ctx, filters...)
	return &Events{ctx: ctx, events: evs, errs: errs}
}

// NextReport returns the next stop report for container id; it fails tb when the stream breaks
// or the subscription ends first.
func (e *Events) NextReport(tb testing.TB, id string) *StopReport {
	tb.Helper()
	return e.nextReport(tb, id, nil)
}

// NextReportWithin is NextReport waiting up to within only: then it marks tb failed and returns
// nil, and the test goes on.
func (e *Events) NextReportWithin(tb testing.TB, id string, within time.Duration) *StopReport {
	tb.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	r := e.nextReport(tb, id, timer.C)
	if r == nil {
		tb.Errorf("no stop report published for %s in %v", id, within)
	}
	return r
}

// nextReport returns the next stop report for container id, or nil once timeout fires.
func (e *Events) nextReport(tb testing.TB, id string, timeout <-chan time.Time) *StopReport {
	tb.Helper()
	var report *StopReport
	e.next(tb, "no stop report published for "+id, timeout, func(env *events.Envelope) bool {
		r, err := DecodeStopReport(env.Event)
		if err != nil {
			tb.Fatal(err)
		}
		if r.ContainerID != id {
			return false
		}
		report = r
		return true
	})
	return report
}

// NextExit returns the exit status of the task of container id whose pid is pid, from a
// subscription to /tasks/exit; it fails tb when none comes before the subscription ends.
func (e *Events) NextExit(tb testing.TB, id string, pid int) uint32 {
	tb.Helper()
	var status uint32
	e.next(tb, fmt.Sprintf("no exit of %s (pid %d) published", id, pid), nil, func(env *events.Envelope) bool {
		ev, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			tb.Fatal(err)
		}
		x, ok := ev.(*apievents.TaskExit)
		if ok && x.ContainerID == id && int(x.Pid) == pid {
			status = x.ExitStatus
			return true
		}
		return false
	})
	return status
}

// next reads events until match accepts one (true), or timeout fires (false); it fails tb with
// missing when the subscription ends first.
func (e *Events) next(tb testing.TB, missing string, timeout <-chan time.Time, match func(*events.Envelope) bool) bool {
	tb.Helper()
	for {
		select {
		case env := <-e.events:
			if match(env) {
				return true
			}
		case err := <-e.errs:
			tb.Fatalf("event stream: %v", err)
		case <-e.ctx.Done():
			tb.Fatal(missing)
		case <-timeout:
			return false
		}
	}
}
