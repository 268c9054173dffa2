package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

var discard = slog.New(slog.DiscardHandler)

func TestEventMessage(t *testing.T) {
	for _, tc := range []struct {
		name, report string
		commands     int
		want         string
	}{
		{"killed", `{"container_id":"c","requested_signal":"SIGTERM","kubernetes":{"container":"app"},
			"drain":{"grace_ns":1e10,"signal":"SIGTERM","totals":{"exited":3,"killed":2},"processes":[
			{"command":"sh","outcome":"exited"},{"command":"sleep","outcome":"killed"},{"command":"java","outcome":"killed"}]}}`,
			3, `stop of container "app" SIGKILLed 2 of 5 processes at the end of its 10s grace period (3 exited on SIGTERM): sleep, java`},
		{"survived, grace cut, more commands than named", `{"container_id":"c","requested_signal":"SIGINT","grace_cut":true,
			"kubernetes":{"container":"db"},"drain":{"grace_ns":2.5e9,"signal":"SIGINT","stop_signal":"SIGQUIT",
			"totals":{"killed":4,"survived":1,"exited":1},"processes":[
			{"command":"a","outcome":"killed"},{"command":"a","outcome":"killed"},{"command":"b","outcome":"killed"},
			{"command":"c","outcome":"survived"},{"command":"d","outcome":"killed"},{"command":"e","outcome":"exited"}]}}`,
			2, `stop of container "db" SIGKILLed 5 of 6 processes at the end of its 2.5s grace period ` +
				`(cut to end before kubelet's SIGKILL; 1 outlived SIGKILL; 1 exited on SIGINT or SIGQUIT): a, b and 2 more`},
		{"one process, no commands named", `{"container_id":"c","kubernetes":{"container":"app"},
			"drain":{"grace_ns":3e10,"totals":{"killed":1},"processes":[{"command":"x","outcome":"killed"}]}}`,
			0, `stop of container "app" SIGKILLed 1 of 1 process at the end of its 30s grace period`},
		{"details omitted, grace from grace_period, container id", `{"container_id":"abc","grace_period":"1m0s",
			"drain":{"totals":{"killed":300},"omitted":299,"processes":[{"command":"worker","outcome":"killed"}]}}`,
			3, `stop of container "abc" SIGKILLed 300 of 300 processes at the end of its 1m0s grace period: worker and 299 more`},
		{"no grace, no signal", `{"container_id":"c","kubernetes":{"container":"app"},
			"drain":{"totals":{"killed":1,"exited":1}}}`,
			3, `stop of container "app" SIGKILLed 1 of 2 processes at the end of its grace period (1 exited on the stop signal)`},
	} {
		if got := eventMessage(decodeFixture(t, tc.report), tc.commands); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

func TestEventMessageBounded(t *testing.T) {
	var procs []string
	for i := range 20 {
		procs = append(procs, fmt.Sprintf(`{"command":"%s%d","outcome":"killed"}`, strings.Repeat("é", 100), i))
	}
	r := decodeFixture(t, `{"container_id":"c","kubernetes":{"container":"`+strings.Repeat("c", 300)+`"},
		"drain":{"grace_ns":1e9,"totals":{"killed":20},"processes":[`+strings.Join(procs, ",")+`]}}`)
	msg := eventMessage(r, 20)
	if len(msg) > maxEventMessage || !utf8.ValidString(msg) || !strings.HasSuffix(msg, "...") {
		t.Errorf("message of %d bytes (valid UTF-8 %t): %s", len(msg), utf8.ValidString(msg), msg)
	}
}

func TestPodLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newPodLimiter(5 * time.Minute)
	step := func(pod string, at time.Duration, want bool) {
		t.Helper()
		got := l.allow(pod, t0.Add(at))
		if got != want {
			t.Errorf("allow(%s, +%s) = %t, want %t", pod, at, got, want)
		}
		if got {
			l.mark(pod, t0.Add(at))
		}
	}
	step("ns/a", 0, true)
	step("ns/a", time.Minute, false)
	step("ns/b", time.Minute, true)
	step("ns/a", 4*time.Minute+59*time.Second, false)
	step("ns/a", 5*time.Minute, true)
	step("ns/b", 5*time.Minute, false)
	step("other/a", 5*time.Minute, true)
	if n := l.len(); n != 3 {
		t.Errorf("limiter remembers %d pods, want 3", n)
	}
	// Every entry is older than the interval: the next call forgets them all.
	if !l.allow("ns/c", t0.Add(time.Hour)) || l.len() != 0 {
		t.Errorf("stale pods not forgotten: %d remembered", l.len())
	}
}

func newTestPoster(t *testing.T, client *fake.Clientset, clock *fakeClock) (*eventPoster, *metrics) {
	t.Helper()
	m := newMetrics(clock.now)
	m.initKubernetesEvents()
	return newEventPoster(client.CoreV1(), "node-1", 5*time.Minute, 3, m.kubeEvents, discard, clock.now), m
}

func eventCount(m *metrics, result string) float64 {
	return testutil.ToFloat64(m.kubeEvents.WithLabelValues(result))
}

func TestEventPosted(t *testing.T) {
	client := fake.NewClientset()
	var sent *corev1.Event // as the exporter sends it, before the fake fills in what the API server would
	client.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sent = a.(k8stesting.CreateAction).GetObject().(*corev1.Event).DeepCopy()
		return false, nil, nil
	})
	clock := newFakeClock()
	p, m := newTestPoster(t, client, clock)

	killed := decodeFixture(t, `{"container_id":"c1","requested_signal":"SIGTERM","grace_period":"10s",
		"kubernetes":{"namespace":"shop","pod":"web-0","pod_uid":"uid-1","container":"app"},
		"drain":{"grace_ns":1e10,"signal":"SIGTERM","totals":{"exited":1,"killed":1},
		"processes":[{"command":"sleep","outcome":"killed"}]}}`)
	p.offer(decodeFixture(t, `{"container_id":"c2","kubernetes":{"namespace":"shop","pod":"web-0","container":"app"},
		"drain":{"totals":{"exited":2}}}`)) // nothing killed: no Event
	p.offer(decodeFixture(t, `{"container_id":"c3","drain":{"totals":{"killed":2}}}`)) // no pod: no Event
	p.offer(killed)
	clock.advance(time.Minute)
	p.offer(killed) // within the interval
	if len(p.queue) != 1 || eventCount(m, eventRateLimited) != 1 {
		t.Fatalf("%d queued, %v rate-limited; want 1 and 1", len(p.queue), eventCount(m, eventRateLimited))
	}
	p.post(context.Background(), <-p.queue)
	if eventCount(m, eventPosted) != 1 {
		t.Errorf("posted: %v, want 1", eventCount(m, eventPosted))
	}

	list, err := client.CoreV1().Events("shop").List(context.Background(), metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("events in shop: %v, %v", list, err)
	}
	if list.Items[0].Name != sent.Name || list.Items[0].Message != sent.Message {
		t.Errorf("stored event %+v is not the one sent, %+v", list.Items[0], sent)
	}
	at := clock.now().Add(-time.Minute)
	want := corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-0.%x", at.UnixNano()), Namespace: "shop"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: "shop", Name: "web-0",
			UID: "uid-1", FieldPath: "spec.containers{app}"},
		Reason:              "GracefulStopKilled",
		Message:             `stop of container "app" SIGKILLed 1 of 2 processes at the end of its 10s grace period (1 exited on SIGTERM): sleep`,
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: "graceful-exporter", Host: "node-1"},
		FirstTimestamp:      metav1.NewTime(at),
		LastTimestamp:       metav1.NewTime(at),
		EventTime:           metav1.NewMicroTime(at),
		Count:               1,
		Action:              "Stop",
		ReportingController: "graceful.dev/exporter",
		ReportingInstance:   "node-1",
	}
	if !equality.Semantic.DeepEqual(*sent, want) {
		t.Errorf("event:\n got %+v\nwant %+v", *sent, want)
	}
}

func TestEventFailedAndDropped(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("apiserver unavailable")
	})
	clock := newFakeClock()
	p, m := newTestPoster(t, client, clock)
	report := func(pod string) *stopReport {
		return decodeFixture(t, `{"container_id":"c","kubernetes":{"namespace":"ns","pod":"`+pod+`","container":"app"},
			"drain":{"totals":{"killed":1}}}`)
	}
	p.offer(report("p-0"))
	p.post(context.Background(), <-p.queue)
	if eventCount(m, eventFailed) != 1 {
		t.Errorf("failed: %v, want 1", eventCount(m, eventFailed))
	}
	// A failed post does not use up the pod's interval: its next stop within it is queued.
	clock.advance(time.Minute)
	p.offer(report("p-0"))
	if len(p.queue) != 1 || eventCount(m, eventRateLimited) != 0 {
		t.Fatalf("the next stop after a failed post: %d queued, %v rate-limited; want 1 and 0", len(p.queue), eventCount(m, eventRateLimited))
	}
	<-p.queue

	// Nothing drains the queue: the report beyond its capacity is dropped, without blocking.
	for i := range eventQueueSize + 1 {
		p.offer(report(fmt.Sprintf("q-%d", i)))
	}
	if eventCount(m, eventDropped) != 1 || len(p.queue) != eventQueueSize {
		t.Errorf("dropped %v with %d queued; want 1 with %d", eventCount(m, eventDropped), len(p.queue), eventQueueSize)
	}
	// The dropped pod's rate limit is not taken: once there is room its next stop is queued.
	<-p.queue
	p.offer(report(fmt.Sprintf("q-%d", eventQueueSize)))
	if len(p.queue) != eventQueueSize || eventCount(m, eventRateLimited) != 0 {
		t.Errorf("dropped pod's next stop: %d queued, %v rate-limited", len(p.queue), eventCount(m, eventRateLimited))
	}
}

func TestEventsNameProgramsNotCommandLines(t *testing.T) {
	for command, want := range map[string]string{
		"/usr/bin/java -Dpassword=secret -jar app.jar": "java",
		"sh -c trap '' TERM; sleep 1":                  "sh",
		"[exe]":                                        "exe",
		"sleep":                                        "sleep",
	} {
		if got := programName(command); got != want {
			t.Errorf("programName(%q) = %q, want %q", command, got, want)
		}
	}
}
