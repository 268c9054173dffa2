package exporter

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/structpb"
)

// StopTopic is the containerd event topic of the graceful shim's stop reports.
const StopTopic = "/graceful/stop"

// The outcomes of a drained process, as stop reports name them.
const (
	outcomeExited            = "exited"
	outcomeKilled            = "killed"
	outcomeSurvived          = "survived"
	outcomeAlreadyExited     = "already-exited"
	outcomeExitedUnsignalled = "exited-unsignalled"
	outcomeAborted           = "aborted"
	outcomeOther             = "other" // any other, for the metrics
)

var knownOutcomes = map[string]bool{outcomeExited: true, outcomeKilled: true, outcomeSurvived: true,
	outcomeAlreadyExited: true, outcomeExitedUnsignalled: true, outcomeAborted: true}

// The orders of a stop, as reports name them; orderForwarded stands for the empty order.
const (
	orderForwarded = "forwarded"
	orderOther     = "other"
)

var knownOrders = map[string]bool{"init-first": true, "children-first": true, "main-exit": true}

// The results of a stop (the result label of graceful_stops_total).
const (
	resultSurvived  = "survived"
	resultKilled    = "killed"
	resultAborted   = "aborted"
	resultForwarded = "forwarded"
	resultReleased  = "released"
	resultClean     = "clean"
)

// abortedNote is what a report's notes say when a SIGKILL or Delete aborted the stop.
const abortedNote = "aborted by SIGKILL"

// stopReport is the part of a stop report (topic StopTopic) that the exporter reads. Numbers
// arrive as JSON numbers through a structpb.Struct: durations are float64 nanoseconds.
type stopReport struct {
	ContainerID     string      `json:"container_id"`
	RequestedSignal string      `json:"requested_signal"`
	GracePeriod     string      `json:"grace_period"`
	Order           string      `json:"order"`
	InitSignal      string      `json:"init_signal"`
	InitDisposition string      `json:"init_disposition"`
	Notes           []string    `json:"notes"`
	GraceCut        bool        `json:"grace_cut"`
	TracerFailed    bool        `json:"tracer_failed"`
	Kubernetes      *workload   `json:"kubernetes"`
	Drain           *drainStats `json:"drain"`
}

// workload names the Kubernetes container a report is about, from CRI's annotations.
type workload struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"pod_uid"`
	Container string `json:"container"`
}

// drainStats is what a drain did to the container's processes other than init.
type drainStats struct {
	Signal       string  `json:"signal"`
	StopSignal   string  `json:"stop_signal"`
	Grace        float64 `json:"grace_ns"`
	Duration     float64 `json:"duration_ns"`
	GraceExpired bool    `json:"grace_expired"`
	Cancelled    bool    `json:"cancelled"`
	// Totals counts every process by outcome; Processes details the first ones only (or every
	// one, from shims older than Totals).
	Totals    map[string]int   `json:"totals"`
	Processes []processOutcome `json:"processes"`
	Omitted   int              `json:"omitted"`
	Notes     []string         `json:"notes"`
}

// processOutcome is one drained process.
type processOutcome struct {
	Pid     int      `json:"pid"`
	Command string   `json:"command"`
	Signals []string `json:"signals"`
	Outcome string   `json:"outcome"`
	After   float64  `json:"after_ns"`
}

// decodeReport decodes the event of a StopTopic envelope.
func decodeReport(event typeurl.Any) (*stopReport, error) {
	if event == nil || event.GetTypeUrl() == "" {
		return nil, errors.New("decode stop report: the envelope carries no event")
	}
	v, err := typeurl.UnmarshalAny(event)
	if err != nil {
		return nil, fmt.Errorf("decode stop report: %w", err)
	}
	st, ok := v.(*structpb.Struct)
	if !ok {
		return nil, fmt.Errorf("decode stop report: a %T, want a google.protobuf.Struct", v)
	}
	data, err := json.Marshal(st.AsMap())
	if err != nil {
		return nil, fmt.Errorf("decode stop report: %w", err)
	}
	var r stopReport
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode stop report: %w", err)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("decode stop report: %w", err)
	}
	return &r, nil
}

// validate rejects a report that decoded but that no shim writes.
func (r *stopReport) validate() error {
	if r.ContainerID == "" {
		return errors.New("no container_id")
	}
	if r.Drain == nil {
		return nil
	}
	for o, n := range r.Drain.Totals {
		if n < 0 {
			return fmt.Errorf("drain.totals[%q] is %d", o, n)
		}
	}
	if r.Drain.Grace < 0 || r.Drain.Duration < 0 {
		return fmt.Errorf("drain.grace_ns %v or duration_ns %v is negative", r.Drain.Grace, r.Drain.Duration)
	}
	return nil
}

// orderLabel is the report's order for the metrics: "forwarded" when no drain was planned, and
// "other" for one this exporter does not know (so that bad input cannot add series).
func (r *stopReport) orderLabel() string {
	switch {
	case r.Order == "":
		return orderForwarded
	case knownOrders[r.Order]:
		return r.Order
	}
	return orderOther
}

// outcomes counts the drained processes by outcome, outcomes outside the known six counted as
// "other": the drain's totals, else (older shims) its detailed processes. It is empty when no
// drain ran.
func (r *stopReport) outcomes() map[string]int {
	counts := map[string]int{}
	if r.Drain == nil {
		return counts
	}
	add := func(o string, n int) {
		if !knownOutcomes[o] {
			o = outcomeOther
		}
		counts[o] += n
	}
	if r.Drain.Totals != nil {
		for o, n := range r.Drain.Totals {
			add(o, n)
		}
		return counts
	}
	for _, p := range r.Drain.Processes {
		add(p.Outcome, 1)
	}
	return counts
}

// result is what the stop came to, the first that applies: survived (a process outlived
// SIGKILL), killed (one was SIGKILLed), aborted (a SIGKILL or Delete cut the stop short),
// forwarded (the signal went to init as the stock shim sends it), released (the stop began but no
// drain ran: the tracer ended before init exited, and init was let go), clean.
func (r *stopReport) result() string {
	counts := r.outcomes()
	switch {
	case counts[outcomeSurvived] > 0:
		return resultSurvived
	case counts[outcomeKilled] > 0:
		return resultKilled
	case r.aborted():
		return resultAborted
	case r.Drain == nil && r.Order == "":
		return resultForwarded
	case r.Drain == nil:
		return resultReleased
	}
	return resultClean
}

// aborted reports whether a SIGKILL or Delete aborted the stop while it ran.
func (r *stopReport) aborted() bool {
	if r.Drain != nil && (r.Drain.Cancelled || r.outcomes()[outcomeAborted] > 0) {
		return true
	}
	if containsNote(r.Notes) {
		return true
	}
	return r.Drain != nil && containsNote(r.Drain.Notes)
}

func containsNote(notes []string) bool {
	for _, n := range notes {
		if strings.Contains(n, abortedNote) {
			return true
		}
	}
	return false
}

// grace is the drain's grace period: drain.grace_ns, else the report's grace_period, else 0.
func (r *stopReport) grace() time.Duration {
	if r.Drain != nil && r.Drain.Grace > 0 {
		return time.Duration(r.Drain.Grace)
	}
	if d, err := time.ParseDuration(r.GracePeriod); err == nil && d > 0 {
		return d
	}
	return 0
}

// pod returns the report's Kubernetes workload, empty outside Kubernetes.
func (r *stopReport) pod() workload {
	if r.Kubernetes == nil {
		return workload{}
	}
	return *r.Kubernetes
}
