package exporter

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// marshalReport wraps a report given as JSON the way the shim publishes it: a structpb.Struct in
// an Any.
func marshalReport(t *testing.T, js string) typeurl.Any {
	t.Helper()
	var fields map[string]any
	if err := json.Unmarshal([]byte(js), &fields); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	st, err := structpb.NewStruct(fields)
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	a, err := typeurl.MarshalAny(st)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func decodeFixture(t *testing.T, js string) *stopReport {
	t.Helper()
	r, err := decodeReport(marshalReport(t, js))
	if err != nil {
		t.Fatalf("decode %s: %v", js, err)
	}
	return r
}

func TestDecodeReport(t *testing.T) {
	r := decodeFixture(t, `{"container_id":"c1","requested_signal":"SIGTERM","grace_period":"10s",
		"order":"children-first","grace_cut":true,"tracer_failed":true,
		"kubernetes":{"namespace":"ns","pod":"web-0","pod_uid":"u-1","container":"app"},
		"drain":{"grace_ns":10000000000,"duration_ns":2500000000,"started":"2026-01-02T03:04:05Z",
			"grace_expired":true,"cancelled":false,"signal":"SIGTERM",
			"totals":{"exited":3,"killed":2},
			"processes":[{"pid":12,"command":"sleep","signals":["SIGTERM","SIGKILL"],"outcome":"killed","after_ns":1e10}],
			"omitted":0,"at_once":4,"host_scan_done":true}}`)
	if r.ContainerID != "c1" || r.Order != "children-first" || !r.GraceCut || !r.TracerFailed {
		t.Errorf("report: %+v", r)
	}
	if *r.Kubernetes != (workload{Namespace: "ns", Pod: "web-0", PodUID: "u-1", Container: "app"}) {
		t.Errorf("kubernetes: %+v", *r.Kubernetes)
	}
	if r.grace() != 10*time.Second || r.Drain.Duration != 2.5e9 {
		t.Errorf("grace %s, duration %v", r.grace(), r.Drain.Duration)
	}
	if want := map[string]int{"exited": 3, "killed": 2}; !maps.Equal(r.outcomes(), want) {
		t.Errorf("outcomes %v, want %v", r.outcomes(), want)
	}
	if p := r.Drain.Processes[0]; p.Pid != 12 || p.Command != "sleep" || p.Outcome != "killed" {
		t.Errorf("process: %+v", p)
	}
}

func TestDecodeReportInvalid(t *testing.T) {
	wrapped, err := typeurl.MarshalAny(wrapperspb.String("not a struct"))
	if err != nil {
		t.Fatal(err)
	}
	for name, event := range map[string]typeurl.Any{
		"nil":              nil,
		"not a struct":     wrapped,
		"unknown type":     &fakeAny{url: "example.com/unknown", value: []byte{1, 2}},
		"garbage":          &fakeAny{url: "type.googleapis.com/google.protobuf.Struct", value: []byte{0xff, 0xff}},
		"no container id":  marshalReport(t, `{"order":"init-first"}`),
		"negative total":   marshalReport(t, `{"container_id":"c","drain":{"totals":{"killed":-1}}}`),
		"fractional total": marshalReport(t, `{"container_id":"c","drain":{"totals":{"killed":1.5}}}`),
		"string grace":     marshalReport(t, `{"container_id":"c","drain":{"grace_ns":"10s"}}`),
		"bad kubernetes":   marshalReport(t, `{"container_id":"c","kubernetes":"pod"}`),
		"negative grace":   marshalReport(t, `{"container_id":"c","drain":{"grace_ns":-1}}`),
	} {
		if r, err := decodeReport(event); err == nil {
			t.Errorf("%s: decoded %+v", name, r)
		} else if !strings.HasPrefix(err.Error(), "decode stop report") {
			t.Errorf("%s: error %q lacks context", name, err)
		}
	}
}

type fakeAny struct {
	url   string
	value []byte
}

func (a *fakeAny) GetTypeUrl() string { return a.url }
func (a *fakeAny) GetValue() []byte   { return a.value }

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name, report  string
		order, result string
		outcomes      map[string]int
	}{
		{"forwarded", `{"container_id":"c","requested_signal":"SIGTERM"}`, "forwarded", "forwarded", map[string]int{}},
		{"forwarded, empty order", `{"container_id":"c","order":""}`, "forwarded", "forwarded", map[string]int{}},
		{"released: began, no drain", `{"container_id":"c","order":"init-first","tracer_failed":true}`, "init-first", "released", map[string]int{}},
		{"clean", `{"container_id":"c","order":"init-first","drain":{"totals":{"exited":2,"already-exited":1}}}`,
			"init-first", "clean", map[string]int{"exited": 2, "already-exited": 1}},
		{"clean, no processes", `{"container_id":"c","order":"main-exit","drain":{"totals":{}}}`,
			"main-exit", "clean", map[string]int{}},
		{"killed", `{"container_id":"c","order":"children-first","drain":{"totals":{"exited":3,"killed":2}}}`,
			"children-first", "killed", map[string]int{"exited": 3, "killed": 2}},
		{"survived before killed", `{"container_id":"c","order":"init-first","drain":{"totals":{"killed":2,"survived":1}}}`,
			"init-first", "survived", map[string]int{"killed": 2, "survived": 1}},
		{"killed before aborted", `{"container_id":"c","order":"init-first","drain":{"cancelled":true,"totals":{"killed":1}}}`,
			"init-first", "killed", map[string]int{"killed": 1}},
		{"aborted: cancelled", `{"container_id":"c","order":"init-first","drain":{"cancelled":true,"totals":{"exited":1}}}`,
			"init-first", "aborted", map[string]int{"exited": 1}},
		{"aborted: outcome", `{"container_id":"c","order":"init-first","drain":{"totals":{"aborted":2}}}`,
			"init-first", "aborted", map[string]int{"aborted": 2}},
		{"aborted: note, no drain", `{"container_id":"c","order":"init-first","notes":["stop aborted by SIGKILL before it began"]}`,
			"init-first", "aborted", map[string]int{}},
		{"aborted: drain note", `{"container_id":"c","order":"init-first","drain":{"notes":["stop aborted by SIGKILL"],"totals":{}}}`,
			"init-first", "aborted", map[string]int{}},
		{"older shim: processes, no totals", `{"container_id":"c","order":"init-first","drain":{"processes":[
			{"pid":2,"command":"a","outcome":"killed"},{"pid":3,"command":"b","outcome":"exited"},
			{"pid":4,"command":"c","outcome":"frozen"}]}}`,
			"init-first", "killed", map[string]int{"killed": 1, "exited": 1, "other": 1}},
		{"unknown order and outcome", `{"container_id":"c","order":"sideways","drain":{"totals":{"vanished":4}}}`,
			"other", "clean", map[string]int{"other": 4}},
	} {
		r := decodeFixture(t, tc.report)
		if got := r.orderLabel(); got != tc.order {
			t.Errorf("%s: order %q, want %q", tc.name, got, tc.order)
		}
		if got := r.result(); got != tc.result {
			t.Errorf("%s: result %q, want %q", tc.name, got, tc.result)
		}
		if got := r.outcomes(); !maps.Equal(got, tc.outcomes) {
			t.Errorf("%s: outcomes %v, want %v", tc.name, got, tc.outcomes)
		}
	}
}
