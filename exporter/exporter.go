// Package exporter is graceful-exporter: it subscribes to the graceful shim's stop reports on
// containerd's event stream (topic /graceful/stop, every namespace) and exports them as
// Prometheus metrics on /metrics, and optionally as Kubernetes Events on the pods whose stops
// SIGKILLed processes. /healthz answers 200 while the subscription is live.
//
// The exporter reads the reports as containerd publishes them and does not link the shim.
package exporter

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The HTTP paths the exporter serves.
const (
	MetricsPath = "/metrics"
	HealthPath  = "/healthz"
)

// shutdownTimeout bounds the HTTP server's graceful shutdown.
const shutdownTimeout = 5 * time.Second

// Main runs the exporter with the command-line arguments args (without the program name) until
// SIGTERM or SIGINT. It returns the exit code: 0 after a clean shutdown or --help, 2 for bad
// flags, 1 when the exporter cannot start or its HTTP server fails.
func Main(args []string) int {
	cfg, err := parseConfig(args, osEnvironment)
	if errors.Is(err, flag.ErrHelp) {
		usage(os.Stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "graceful-exporter: %v\nRun graceful-exporter --help for the flags.\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("graceful-exporter failed", "error", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// exporter turns stop reports into metrics and Events.
type exporter struct {
	log     *slog.Logger
	metrics *metrics
	events  *eventPoster // nil without --kubernetes-events
}

// handle decodes and counts one stop report's envelope.
func (e *exporter) handle(env *types.Envelope) {
	r, err := decodeReport(env.GetEvent())
	if err != nil {
		e.metrics.invalid.Inc()
		e.log.Warn("invalid stop report", "containerd_namespace", env.GetNamespace(), "error", err)
		return
	}
	e.metrics.record(env.GetNamespace(), r)
	w := r.pod()
	e.log.Debug("stop report", "containerd_namespace", env.GetNamespace(), "id", r.ContainerID,
		"namespace", w.Namespace, "pod", w.Pod, "container", w.Container, "order", r.orderLabel(), "result", r.result())
	if e.events != nil {
		e.events.offer(r)
	}
}

// run serves the metrics and follows containerd's events until ctx ends.
func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	m := newMetrics(time.Now)
	e := &exporter{log: log, metrics: m}
	if cfg.kubernetesEvents {
		client, err := newEventsClient(cfg.kubeconfig)
		if err != nil {
			return err
		}
		m.initKubernetesEvents()
		e.events = newEventPoster(client, cfg.nodeName, cfg.eventInterval, cfg.eventCommands, m.kubeEvents,
			log, time.Now)
	}
	sub := newSubscriber(cfg.address, log, m, e.handle)

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen on --listen=%s: %w", cfg.listen, err)
	}
	srv := &http.Server{Handler: newHandler(m, sub.Live), ReadHeaderTimeout: 10 * time.Second}
	log.Info("serving metrics", "address", ln.Addr().String(), "containerd", cfg.address,
		"kubernetes_events", cfg.kubernetesEvents)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- fmt.Errorf("serve metrics: %w", err)
			cancel()
		}
	})
	wg.Go(func() { sub.run(ctx) })
	wg.Go(func() { sweepSeries(ctx, m.series, cfg.forgetAfter, log) })
	if e.events != nil {
		wg.Go(func() { e.events.run(ctx) })
	}

	<-ctx.Done()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancelShutdown()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("http server shutdown", "error", err)
	}
	wg.Wait()
	select {
	case err := <-serveErr:
		return err
	default:
		return nil
	}
}

// newHandler serves the metrics on MetricsPath and the subscription's health on HealthPath.
func newHandler(m *metrics, live func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry}))
	mux.HandleFunc(HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !live() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not subscribed to containerd's events")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// sweepSeries deletes stale pod series every sweepInterval(forgetAfter) until ctx ends.
func sweepSeries(ctx context.Context, s *podSeries, forgetAfter time.Duration, log *slog.Logger) {
	t := time.NewTicker(sweepInterval(forgetAfter))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := s.sweep(forgetAfter); n > 0 {
				log.Debug("forgot stale pod series", "deleted", n, "kept", s.len())
			}
		}
	}
}
