package exporter

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// The exported metric names; the integration tests read them.
const (
	MetricStops               = "graceful_stops_total"
	MetricStopProcesses       = "graceful_stop_processes_total"
	MetricDrainDuration       = "graceful_stop_drain_duration_seconds"
	MetricGraceCut            = "graceful_stop_grace_cut_total"
	MetricTracerFailed        = "graceful_stop_tracer_failed_total"
	MetricReportsInvalid      = "graceful_exporter_reports_invalid_total"
	MetricConnected           = "graceful_exporter_containerd_connected"
	MetricReconnects          = "graceful_exporter_containerd_reconnects_total"
	MetricDisconnectedSeconds = "graceful_exporter_containerd_disconnected_seconds_total"
	MetricKubernetesEvents    = "graceful_exporter_kubernetes_events_total"
)

// The results of a Kubernetes Event (the result label of MetricKubernetesEvents).
const (
	eventPosted      = "posted"
	eventRateLimited = "rate_limited"
	eventFailed      = "failed"
	eventDropped     = "dropped"
)

// podLabels are the first labels of every per-container vector; podLabel indexes "pod".
var podLabels = []string{"containerd_namespace", "namespace", "pod", "container"}

// drainBuckets are the drain duration histogram's buckets, in seconds.
var drainBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// metrics are the exporter's Prometheus metrics, in a registry of their own.
type metrics struct {
	registry *prometheus.Registry
	series   *podSeries

	stops         *prometheus.CounterVec
	processes     *prometheus.CounterVec
	drainDuration *prometheus.HistogramVec
	graceCut      *prometheus.CounterVec
	tracerFailed  *prometheus.CounterVec
	invalid       prometheus.Counter
	connected     prometheus.Gauge
	reconnects    prometheus.Counter
	disconnected  *downtime
	kubeEvents    *prometheus.CounterVec
}

// newMetrics registers the metrics, with the Go and process collectors, in a new registry.
// now is the clock of the series' last updates.
func newMetrics(now func() time.Time) *metrics {
	labels := func(extra ...string) []string { return append(append([]string(nil), podLabels...), extra...) }
	m := &metrics{
		registry: prometheus.NewRegistry(),
		series:   newPodSeries(now),
		stops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricStops,
			Help: "Container stops by order and result (survived, killed, aborted, forwarded, clean)."},
			labels("order", "result")),
		processes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricStopProcesses,
			Help: "Processes other than init drained by container stops, by outcome."},
			labels("outcome")),
		drainDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricDrainDuration,
			Help: "How long the drains of container stops took.", Buckets: drainBuckets},
			[]string{"containerd_namespace", "namespace", "order"}),
		graceCut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricGraceCut,
			Help: "Container stops whose grace period was cut to end before kubelet's SIGKILL."},
			labels()),
		tracerFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricTracerFailed,
			Help: "Container stops whose tracer could not attach to init."},
			labels()),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricReportsInvalid,
			Help: "Stop reports that could not be decoded."}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricConnected,
			Help: "1 while the subscription to containerd's events is live, else 0."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricReconnects,
			Help: "Subscriptions to containerd's events made again after the first."}),
		disconnected: &downtime{now: now},
		kubeEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricKubernetesEvents,
			Help: "Kubernetes Events on stops that SIGKILLed processes, by result (posted, rate_limited, failed, dropped)."},
			[]string{"result"}),
	}
	disconnected := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: MetricDisconnectedSeconds,
		Help: "Seconds spent without containerd's events after losing them, until subscribed again."},
		m.disconnected.seconds)
	m.registry.MustRegister(m.stops, m.processes, m.drainDuration, m.graceCut, m.tracerFailed,
		m.invalid, m.connected, m.reconnects, disconnected, m.kubeEvents,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// initKubernetesEvents makes the Event counters show, at 0, before the first Event.
func (m *metrics) initKubernetesEvents() {
	for _, r := range []string{eventPosted, eventRateLimited, eventFailed, eventDropped} {
		m.kubeEvents.WithLabelValues(r)
	}
}

// record counts a decoded stop report from containerd namespace ns.
func (m *metrics) record(ns string, r *stopReport) {
	w := r.pod()
	pod := []string{labelValue(ns), labelValue(w.Namespace), labelValue(w.Pod), labelValue(w.Container)}
	with := func(extra ...string) []string { return append(append([]string(nil), pod...), extra...) }

	order := r.orderLabel()
	m.series.add(m.stops, 1, with(order, r.result())...)
	for outcome, n := range r.outcomes() {
		m.series.add(m.processes, float64(n), with(outcome)...)
	}
	if r.GraceCut {
		m.series.add(m.graceCut, 1, pod...)
	}
	if r.TracerFailed {
		m.series.add(m.tracerFailed, 1, pod...)
	}
	if r.Drain != nil {
		m.drainDuration.WithLabelValues(pod[0], pod[1], order).Observe(r.Drain.Duration / float64(time.Second))
	}
}

// downtime accumulates the time without containerd's events after losing them; its seconds
// include the outage under way, so that the counter moves during one.
type downtime struct {
	now   func() time.Time
	mu    sync.Mutex
	total time.Duration
	since time.Time // the current outage's start; zero when connected
}

// lost marks the start of an outage at t (no-op if one is under way).
func (d *downtime) lost(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.since.IsZero() {
		d.since = t
	}
}

// restored ends the outage under way, if any, at t.
func (d *downtime) restored(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.since.IsZero() {
		d.total += t.Sub(d.since)
		d.since = time.Time{}
	}
}

func (d *downtime) seconds() float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	total := d.total
	if !d.since.IsZero() {
		total += d.now().Sub(d.since)
	}
	return total.Seconds()
}
