package exporter

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const killedReport = `{"container_id":"c1","order":"children-first","grace_cut":true,
	"kubernetes":{"namespace":"ns","pod":"web-0","pod_uid":"u","container":"app"},
	"drain":{"grace_ns":1e10,"duration_ns":1.2e10,"totals":{"exited":3,"killed":2}}}`

func TestRecord(t *testing.T) {
	m := newMetrics(newFakeClock().now)
	m.record("k8s.io", decodeFixture(t, killedReport))
	m.record("k8s.io", decodeFixture(t, killedReport))
	m.record("default", decodeFixture(t, `{"container_id":"c2","tracer_failed":true}`))

	for _, tc := range []struct {
		got  float64
		want float64
		what string
	}{
		{testutil.ToFloat64(m.stops.WithLabelValues("k8s.io", "ns", "web-0", "app", "children-first", "killed")), 2, "killed stops"},
		{testutil.ToFloat64(m.stops.WithLabelValues("default", "", "", "", "forwarded", "forwarded")), 1, "forwarded stops"},
		{testutil.ToFloat64(m.processes.WithLabelValues("k8s.io", "ns", "web-0", "app", "killed")), 4, "killed processes"},
		{testutil.ToFloat64(m.processes.WithLabelValues("k8s.io", "ns", "web-0", "app", "exited")), 6, "exited processes"},
		{testutil.ToFloat64(m.graceCut.WithLabelValues("k8s.io", "ns", "web-0", "app")), 2, "grace cut"},
		{testutil.ToFloat64(m.tracerFailed.WithLabelValues("default", "", "", "")), 1, "tracer failed"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	// One drain histogram series, without pod labels; the forwarded stop observed nothing.
	if n := testutil.CollectAndCount(m.drainDuration); n != 1 {
		t.Errorf("%d drain duration series, want 1", n)
	}
	const want = `
# HELP graceful_stop_drain_duration_seconds How long the drains of container stops took.
# TYPE graceful_stop_drain_duration_seconds histogram
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="0.05"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="0.1"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="0.25"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="0.5"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="1"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="2.5"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="5"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="10"} 0
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="30"} 2
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="60"} 2
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="120"} 2
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="300"} 2
graceful_stop_drain_duration_seconds_bucket{containerd_namespace="k8s.io",namespace="ns",order="children-first",le="+Inf"} 2
graceful_stop_drain_duration_seconds_sum{containerd_namespace="k8s.io",namespace="ns",order="children-first"} 24
graceful_stop_drain_duration_seconds_count{containerd_namespace="k8s.io",namespace="ns",order="children-first"} 2
`
	if err := testutil.CollectAndCompare(m.drainDuration, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// Label values from a report that the client library would reject are cleaned, not a panic.
func TestRecordBadLabelValues(t *testing.T) {
	m := newMetrics(time.Now)
	r := decodeFixture(t, `{"container_id":"c","kubernetes":{"namespace":"ns","pod":"p","container":"x"}}`)
	r.Kubernetes.Pod = "bad\xffutf8" + strings.Repeat("é", 400)
	m.record("ns\xfe", r)
	if n := testutil.CollectAndCount(m.stops); n != 1 {
		t.Errorf("%d stop series, want 1", n)
	}
}

func TestSweepForgetsStalePods(t *testing.T) {
	clock := newFakeClock()
	m := newMetrics(clock.now)
	m.record("k8s.io", decodeFixture(t, killedReport))
	m.record("default", decodeFixture(t, `{"container_id":"c2","grace_cut":true,"drain":{"duration_ns":1,"totals":{"killed":1}}}`))
	clock.advance(40 * time.Minute)
	m.record("k8s.io", decodeFixture(t, strings.ReplaceAll(killedReport, "web-0", "web-1")))

	if n := m.series.sweep(time.Hour); n != 0 {
		t.Errorf("swept %d series that are not stale yet", n)
	}
	clock.advance(30 * time.Minute) // web-0 is 70 minutes old, web-1 30.
	if n := m.series.sweep(time.Hour); n != 4 {
		t.Errorf("swept %d series, want web-0's 4 (stops, 2 process outcomes, grace cut)", n)
	}
	for _, tc := range []struct {
		vec  string
		got  int
		want int
	}{
		// web-1's series and the pod-less ones of the "default" stop remain.
		{"stops", testutil.CollectAndCount(m.stops), 2},
		{"processes", testutil.CollectAndCount(m.processes), 3},
		{"grace cut", testutil.CollectAndCount(m.graceCut), 2},
		{"drain duration (no pod labels, never swept)", testutil.CollectAndCount(m.drainDuration), 2},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %d series, want %d", tc.vec, tc.got, tc.want)
		}
	}
	if got := testutil.ToFloat64(m.stops.WithLabelValues("k8s.io", "ns", "web-1", "app", "children-first", "killed")); got != 1 {
		t.Errorf("web-1's stops: %v, want 1", got)
	}
	clock.advance(24 * time.Hour)
	m.series.sweep(time.Hour)
	if n := m.series.len(); n != 0 {
		t.Errorf("%d series remembered after every pod went stale", n)
	}
	if got := testutil.CollectAndCount(m.stops); got != 1 {
		t.Errorf("%d stop series, want the pod-less one only", got)
	}
}

func TestSweepInterval(t *testing.T) {
	for forget, want := range map[time.Duration]time.Duration{time.Hour: time.Minute, 2 * time.Minute: 30 * time.Second} {
		if got := sweepInterval(forget); got != want {
			t.Errorf("sweepInterval(%s) = %s, want %s", forget, got, want)
		}
	}
}

// /metrics shows the label-less counters before any report; /healthz follows the subscription.
func TestHandler(t *testing.T) {
	m := newMetrics(time.Now)
	var live atomic.Bool
	srv := httptest.NewServer(newHandler(m, live.Load))
	defer srv.Close()

	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	code, body := get(MetricsPath)
	if code != http.StatusOK {
		t.Fatalf("%s: %d", MetricsPath, code)
	}
	for _, want := range []string{MetricReportsInvalid + " 0", MetricConnected + " 0", MetricReconnects + " 0",
		MetricDisconnectedSeconds + " 0", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("%s lacks %q", MetricsPath, want)
		}
	}
	if code, _ := get(HealthPath); code != http.StatusServiceUnavailable {
		t.Errorf("%s while not subscribed: %d", HealthPath, code)
	}
	live.Store(true)
	if code, _ := get(HealthPath); code != http.StatusOK {
		t.Errorf("%s while subscribed: %d", HealthPath, code)
	}
}
