package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

type stopReport = stack.StopReport

// termed counts the processes that exited after a SIGTERM (outcome "exited", SIGTERM among their
// signals), and returns the outcomes of all. A report that details only its first processes
// gives totals by outcome for all of them: "exited" means exited after the drain signal, which
// the detailed processes show to be SIGTERM.
func termed(r *stopReport) (int, map[string]int) {
	outcomes := map[string]int{}
	if r.Drain == nil {
		return 0, outcomes
	}
	n, notTermed := 0, 0
	for _, p := range r.Drain.Processes {
		outcomes[p.Outcome]++
		if p.Outcome == "exited" {
			if slices.Contains(p.Signals, "SIGTERM") {
				n++
			} else {
				notTermed++
			}
		}
	}
	if r.Drain.Totals != nil {
		outcomes = r.Drain.Totals
		n = r.Drain.Totals["exited"] - notTermed
	}
	return n, outcomes
}

// reports collects the stop reports published on containerd's event stream (topic
// /graceful/stop), by container id.
type reports struct {
	mu      sync.Mutex
	got     map[string]*stopReport
	changed chan struct{}
	err     error
}

// subscribe starts collecting stop reports until ctx ends.
func subscribe(ctx context.Context, s *stack.Stack) *reports {
	r := &reports{got: map[string]*stopReport{}, changed: make(chan struct{})}
	events, errs := s.Client.Subscribe(ctx, `topic=="/graceful/stop"`)
	go func() {
		for {
			select {
			case env := <-events:
				rep, err := stack.DecodeStopReport(env.Event)
				r.mu.Lock()
				if err != nil {
					r.err = err
				} else {
					r.got[rep.ContainerID] = rep
				}
				close(r.changed)
				r.changed = make(chan struct{})
				r.mu.Unlock()
			case err := <-errs:
				r.mu.Lock()
				if err == nil {
					err = fmt.Errorf("event stream closed")
				}
				r.err = err
				close(r.changed)
				r.changed = make(chan struct{})
				r.mu.Unlock()
				return
			}
		}
	}()
	return r
}

// wait returns the stop report of container id, waiting up to timeout for it.
func (r *reports) wait(id string, timeout time.Duration) (*stopReport, error) {
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		rep, err, changed := r.got[id], r.err, r.changed
		r.mu.Unlock()
		if rep != nil {
			return rep, nil
		}
		if err != nil {
			return nil, err
		}
		select {
		case <-changed:
		case <-deadline:
			return nil, fmt.Errorf("no stop report for %s after %v", id, timeout)
		}
	}
}
