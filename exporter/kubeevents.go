package exporter

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// What the exporter's Kubernetes Events say about themselves.
const (
	EventReason         = "GracefulStopKilled"
	EventAction         = "Stop" // required of an Event with an eventTime
	EventComponent      = "graceful-exporter"
	ReportingController = "graceful.dev/exporter"

	eventQueueSize       = 64
	eventPostTimeout     = 10 * time.Second
	maxEventMessage      = 1024 // the API server's limit, in bytes
	maxReportingInstance = 128  // the API server's limit
	maxCommandLength     = 64
)

// newEventsClient builds the client of core/v1 Events: from kubeconfig, or in-cluster when it is
// "".
func newEventsClient(kubeconfig string) (corev1client.EventsGetter, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes in-cluster config (give --kubeconfig outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes config from --kubeconfig=%s: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = EventComponent
	client, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// eventPoster posts a Kubernetes Event on the pod of each stop that SIGKILLed processes, at most
// one per pod per interval, from a queue so that a slow API server never holds up the metrics.
type eventPoster struct {
	client   corev1client.EventsGetter
	node     string
	commands int // how many commands a message names
	limiter  *podLimiter
	now      func() time.Time
	queue    chan *corev1.Event
	results  *prometheus.CounterVec
	log      *slog.Logger

	// lastError is the last failure logged, so that repeated ones are logged at debug only.
	lastError string
}

func newEventPoster(client corev1client.EventsGetter, node string, interval time.Duration, commands int,
	results *prometheus.CounterVec, log *slog.Logger, now func() time.Time) *eventPoster {
	return &eventPoster{client: client, node: node, commands: commands, limiter: newPodLimiter(interval),
		now: now, queue: make(chan *corev1.Event, eventQueueSize), results: results, log: log}
}

// offer queues an Event for the report if it names a pod and SIGKILLed processes, unless the
// pod's rate limit or a full queue stops it. It never blocks.
func (p *eventPoster) offer(r *stopReport) {
	w := r.pod()
	counts := r.outcomes()
	if w.Pod == "" || w.Namespace == "" || counts[outcomeKilled]+counts[outcomeSurvived] == 0 {
		return
	}
	now := p.now()
	key := w.Namespace + "/" + w.Pod
	if !p.limiter.allow(key, now) {
		p.results.WithLabelValues(eventRateLimited).Inc()
		p.log.Debug("kubernetes event rate-limited", "pod", key, "container", w.Container)
		return
	}
	select {
	case p.queue <- p.event(r, now):
		p.limiter.mark(key, now)
	default:
		p.results.WithLabelValues(eventDropped).Inc()
		p.log.Warn("kubernetes event dropped: the queue is full", "pod", key, "container", w.Container)
	}
}

// run posts the queued Events until ctx ends.
func (p *eventPoster) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-p.queue:
			p.post(ctx, ev)
		}
	}
}

// post creates one Event, within eventPostTimeout.
func (p *eventPoster) post(ctx context.Context, ev *corev1.Event) {
	postCtx, cancel := context.WithTimeout(ctx, eventPostTimeout)
	defer cancel()
	_, err := p.client.Events(ev.Namespace).Create(postCtx, ev, metav1.CreateOptions{})
	if err == nil {
		p.results.WithLabelValues(eventPosted).Inc()
		p.log.Debug("kubernetes event posted", "namespace", ev.Namespace, "name", ev.Name)
		return
	}
	if ctx.Err() != nil {
		return // shutting down
	}
	// The pod's next stop may try again: a failed post does not use up its interval.
	p.limiter.forget(ev.InvolvedObject.Namespace+"/"+ev.InvolvedObject.Name, ev.FirstTimestamp.Time)
	p.results.WithLabelValues(eventFailed).Inc()
	level := slog.LevelWarn
	if msg := err.Error(); msg == p.lastError {
		level = slog.LevelDebug
	} else {
		p.lastError = msg
	}
	p.log.Log(ctx, level, "cannot post kubernetes event", "namespace", ev.Namespace,
		"pod", ev.InvolvedObject.Name, "error", err)
}

// event is the Event on the report's pod, at now.
func (p *eventPoster) event(r *stopReport, now time.Time) *corev1.Event {
	w := r.pod()
	ref := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: w.Namespace, Name: w.Pod,
		UID: k8stypes.UID(w.PodUID)}
	if w.Container != "" {
		ref.FieldPath = fmt.Sprintf("spec.containers{%s}", w.Container)
	}
	instance := truncate(p.node, maxReportingInstance)
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", w.Pod, now.UnixNano()),
			Namespace: w.Namespace,
		},
		InvolvedObject:      ref,
		Reason:              EventReason,
		Message:             eventMessage(r, p.commands),
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: EventComponent, Host: p.node},
		FirstTimestamp:      metav1.NewTime(now),
		LastTimestamp:       metav1.NewTime(now),
		EventTime:           metav1.NewMicroTime(now),
		Count:               1,
		Action:              EventAction,
		ReportingController: ReportingController,
		ReportingInstance:   instance,
	}
}

// eventMessage says what the stop did, for example:
//
//	stop of container "app" SIGKILLed 2 of 5 processes at the end of its 10s grace period (3 exited on SIGTERM): sleep, java, run.sh
//
// naming at most commands commands of the SIGKILLed processes. It is at most maxEventMessage bytes.
func eventMessage(r *stopReport, commands int) string {
	counts := r.outcomes()
	killed, survived := counts[outcomeKilled], counts[outcomeSurvived]
	total := 0
	for _, n := range counts {
		total += n
	}
	container := r.pod().Container
	if container == "" {
		container = r.ContainerID
	}

	var b strings.Builder
	fmt.Fprintf(&b, "stop of container %q SIGKILLed %d of %d %s at the end of its ", container,
		killed+survived, total, plural(total, "process", "processes"))
	if grace := r.grace(); grace > 0 {
		fmt.Fprintf(&b, "%s ", grace.Round(time.Millisecond))
	}
	b.WriteString("grace period")

	var asides []string
	if r.GraceCut {
		asides = append(asides, "cut to end before kubelet's SIGKILL")
	}
	if survived > 0 {
		asides = append(asides, fmt.Sprintf("%d outlived SIGKILL", survived))
	}
	if exited := counts[outcomeExited]; exited > 0 {
		asides = append(asides, fmt.Sprintf("%d exited on %s", exited, drainSignals(r)))
	}
	if len(asides) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(asides, "; "))
	}

	names, covered := killedCommands(r, commands)
	if len(names) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(names, ", "))
		if more := killed + survived - covered; more > 0 {
			fmt.Fprintf(&b, " and %d more", more)
		}
	}
	return truncate(b.String(), maxEventMessage)
}

// killedCommands returns the distinct program names of the first SIGKILLed processes the report
// details, at most limit of them, and how many processes they name. Names only: a command line
// can carry secrets, and the report in the shim's log has it whole.
func killedCommands(r *stopReport, limit int) (names []string, covered int) {
	if r.Drain == nil || limit <= 0 {
		return nil, 0
	}
	named := map[string]bool{}
	for _, p := range r.Drain.Processes {
		if p.Outcome != outcomeKilled && p.Outcome != outcomeSurvived || p.Command == "" {
			continue
		}
		name := truncate(programName(p.Command), maxCommandLength)
		if !named[name] {
			if len(names) == limit {
				continue
			}
			named[name] = true
			names = append(names, name)
		}
		covered++
	}
	return names, covered
}

// programName is the program of a report's command: the base name of its first word, or the
// name in brackets that the report gives a process whose command line it could not read.
func programName(command string) string {
	if strings.HasPrefix(command, "[") && strings.HasSuffix(command, "]") {
		return command[1 : len(command)-1]
	}
	fields := strings.Fields(command)
	if len(fields) == 0 {
		return command
	}
	return path.Base(fields[0])
}

// drainSignals names the signal(s) the drain sent before SIGKILL.
func drainSignals(r *stopReport) string {
	sig := r.RequestedSignal
	stopSig := ""
	if r.Drain != nil {
		if r.Drain.Signal != "" {
			sig = r.Drain.Signal
		}
		stopSig = r.Drain.StopSignal
	}
	switch {
	case sig == "":
		return "the stop signal"
	case stopSig != "" && stopSig != sig:
		return sig + " or " + stopSig
	}
	return sig
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// truncate cuts s to at most n bytes, on a rune boundary, marking the cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutRunes(s, n-len("...")) + "..."
}
