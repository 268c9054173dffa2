package stack

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/structpb"
)

// StopReport is the part of the graceful shim's stop report (topic /graceful/stop) that the tests
// and the benchmark read. Numbers arrive as JSON numbers through a structpb.Struct, so durations
// are float64 nanoseconds.
type StopReport struct {
	ContainerID string `json:"container_id"`
	Requested   string `json:"requested_signal"`
	Order       string `json:"order"`
	InitSignal  string `json:"init_signal"`
	// InitDisposition: how init's treatment of the requested signal was read (caught, sigwait,
	// signalfd, blocked, ignored, drops, default).
	InitDisposition string   `json:"init_disposition"`
	Notes           []string `json:"notes"`
	TracerStart     float64  `json:"tracer_start_ns"` // init-first: the tracer's start until it traced init
	// InitAutoreap: init-first, init ignored SIGCHLD on its way to exit, so its children released
	// themselves while it was held.
	InitAutoreap bool `json:"init_autoreap"`
	// GraceCut: the grace was cut to kubelet's budget; TracerFailed: the tracer could not attach.
	GraceCut     bool `json:"grace_cut"`
	TracerFailed bool `json:"tracer_failed"`
	// Kubernetes: the pod and container CRI's annotations name.
	Kubernetes *struct {
		Namespace string `json:"namespace"`
		Pod       string `json:"pod"`
		PodUID    string `json:"pod_uid"`
		Container string `json:"container"`
	} `json:"kubernetes"`
	Drain *struct {
		Started      time.Time `json:"started"`
		Grace        float64   `json:"grace_ns"`
		Duration     float64   `json:"duration_ns"`
		GraceExpired bool      `json:"grace_expired"`
		// Totals counts every process by outcome; Processes details the first ones only (newer
		// shims), or every process (older ones, without Totals).
		Totals  map[string]int `json:"totals"`
		Omitted int            `json:"omitted"`
		// HostScanDone: the full pass over /proc finished before the drain ended; HostScanFound:
		// members only it found.
		HostScanDone  bool `json:"host_scan_done"`
		HostScanFound int  `json:"host_scan_found"`
		// AtOnce: members signalled at once from inside the PID namespace; Notes: why not, if
		// that failed.
		AtOnce int      `json:"at_once"`
		Notes  []string `json:"notes"`
		// StopSignal: the stop signal given to the members that handle it instead of the drain
		// signal.
		StopSignal string `json:"stop_signal"`
		Processes  []struct {
			Pid     int      `json:"pid"`
			Command string   `json:"command"`
			Signals []string `json:"signals"`
			Outcome string   `json:"outcome"`
			After   float64  `json:"after_ns"`
		} `json:"processes"`
	} `json:"drain"`
}

// DecodeStopReport decodes a /graceful/stop event.
func DecodeStopReport(event typeurl.Any) (*StopReport, error) {
	v, err := typeurl.UnmarshalAny(event)
	if err != nil {
		return nil, fmt.Errorf("decode stop report: %w", err)
	}
	st, ok := v.(*structpb.Struct)
	if !ok {
		return nil, fmt.Errorf("stop report is a %T, want a struct", v)
	}
	data, err := json.Marshal(st.AsMap())
	if err != nil {
		return nil, err
	}
	var rep StopReport
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("decode stop report: %w", err)
	}
	return &rep, nil
}
