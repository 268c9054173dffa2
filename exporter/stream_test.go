package exporter

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeEvents is containerd's events service, enough for the subscriber: Publish fans an event out
// to the subscriptions whose filters name its topic. It drops the first dropProbes probes, as if
// the subscription were not registered yet.
type fakeEvents struct {
	eventsapi.UnimplementedEventsServer
	mu         sync.Mutex
	subs       map[*fakeSubscription]bool
	dropProbes int
	// endAfterProbe ends each subscription's stream once a probe went through it.
	endAfterProbe bool
}

type fakeSubscription struct {
	filters []string
	ch      chan *types.Envelope
}

func (f *fakeEvents) Publish(ctx context.Context, req *eventsapi.PublishRequest) (*emptypb.Empty, error) {
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return nil, status.Error(codes.InvalidArgument, "namespace required")
	}
	f.mu.Lock()
	drop := req.Topic == ProbeTopic && f.dropProbes > 0
	if drop {
		f.dropProbes--
	}
	f.mu.Unlock()
	if !drop {
		f.broadcast(&types.Envelope{Timestamp: timestamppb.Now(), Namespace: ns, Topic: req.Topic, Event: req.Event})
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeEvents) broadcast(env *types.Envelope) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		if slices.Contains(s.filters, `topic=="`+env.Topic+`"`) {
			s.ch <- env
		}
	}
}

func (f *fakeEvents) Subscribe(req *eventsapi.SubscribeRequest, srv eventsapi.Events_SubscribeServer) error {
	s := &fakeSubscription{filters: req.Filters, ch: make(chan *types.Envelope, 64)}
	f.mu.Lock()
	f.subs[s] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, s)
		f.mu.Unlock()
	}()
	for {
		select {
		case env := <-s.ch:
			if err := srv.Send(env); err != nil {
				return err
			}
			if f.endAfterProbe && env.Topic == ProbeTopic {
				return status.Error(codes.Unavailable, "stream dropped")
			}
		case <-srv.Context().Done():
			return nil
		}
	}
}

// serveFake serves f on a unix socket at path until the returned server is stopped.
func serveFake(t *testing.T, path string, f *fakeEvents) *grpc.Server {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	eventsapi.RegisterEventsServer(srv, f)
	go srv.Serve(ln)
	return srv
}

func waitLive(t *testing.T, states <-chan bool, want bool) {
	t.Helper()
	select {
	case got := <-states:
		if got != want {
			t.Fatalf("subscription live %t, want %t", got, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("subscription never became live=%t", want)
	}
}

// The subscriber is live only once its probe came back, hands on the stop reports of every
// namespace, and subscribes again when containerd restarts.
func TestSubscriber(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	fake := &fakeEvents{subs: map[*fakeSubscription]bool{}, dropProbes: 2}
	srv := serveFake(t, socket, fake)

	m := newMetrics(time.Now)
	e := &exporter{log: discard, metrics: m}
	handled := make(chan string, 8)
	sub := newSubscriber(socket, discard, m, func(env *types.Envelope) {
		e.handle(env)
		handled <- env.Namespace
	})
	sub.probeInterval, sub.backoffMin, sub.backoffMax = 10*time.Millisecond, time.Millisecond, 20*time.Millisecond
	states := make(chan bool, 8)
	sub.onLive = func(live bool) { states <- live }

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sub.run(ctx)
	}()
	defer func() {
		cancel()
		<-done
		srv.Stop()
	}()

	waitLive(t, states, true)
	if !sub.Live() || testutil.ToFloat64(m.connected) != 1 {
		t.Fatalf("live %t, connected %v", sub.Live(), testutil.ToFloat64(m.connected))
	}
	// Another exporter's probe and a report of another namespace.
	other, err := anypb.New(mustStruct(t, map[string]any{"token": "someone else"}))
	if err != nil {
		t.Fatal(err)
	}
	fake.broadcast(&types.Envelope{Namespace: "default", Topic: ProbeTopic, Event: other})
	fake.broadcast(&types.Envelope{Namespace: "k8s.io", Topic: StopTopic, Event: mustAny(t, killedReport)})
	fake.broadcast(&types.Envelope{Namespace: "k8s.io", Topic: StopTopic, Event: &anypb.Any{TypeUrl: "x"}})
	for range 2 {
		if ns := <-handled; ns != "k8s.io" {
			t.Errorf("report from namespace %q", ns)
		}
	}
	if got := testutil.ToFloat64(m.stops.WithLabelValues("k8s.io", "ns", "web-0", "app", "children-first", "killed")); got != 1 {
		t.Errorf("stops: %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.invalid); got != 1 {
		t.Errorf("invalid reports: %v, want 1", got)
	}

	// containerd restarts.
	srv.Stop()
	waitLive(t, states, false)
	if sub.Live() || testutil.ToFloat64(m.connected) != 0 {
		t.Errorf("after the restart: live %t, connected %v", sub.Live(), testutil.ToFloat64(m.connected))
	}
	srv = serveFake(t, socket, fake)
	waitLive(t, states, true)
	if got := testutil.ToFloat64(m.reconnects); got != 1 {
		t.Errorf("reconnects: %v, want 1", got)
	}
	if got := m.disconnected.seconds(); got <= 0 {
		t.Errorf("disconnected seconds: %v, want > 0", got)
	}
	fake.broadcast(&types.Envelope{Namespace: "k8s.io", Topic: StopTopic, Event: mustAny(t, killedReport)})
	<-handled
	if got := testutil.ToFloat64(m.stops.WithLabelValues("k8s.io", "ns", "web-0", "app", "children-first", "killed")); got != 2 {
		t.Errorf("stops after reconnecting: %v, want 2", got)
	}
}

func TestDialTarget(t *testing.T) {
	for in, want := range map[string]string{
		"/run/containerd/containerd.sock":        "unix:///run/containerd/containerd.sock",
		"unix:///run/containerd/containerd.sock": "unix:///run/containerd/containerd.sock",
		"c.sock":                                 "unix:c.sock",
	} {
		if got := dialTarget(in); got != want {
			t.Errorf("dialTarget(%q) = %q, want %q", in, got, want)
		}
	}
}

func mustAny(t *testing.T, js string) *anypb.Any {
	t.Helper()
	a := marshalReport(t, js)
	return &anypb.Any{TypeUrl: a.GetTypeUrl(), Value: a.GetValue()}
}

func mustStruct(t *testing.T, fields map[string]any) *structpb.Struct {
	t.Helper()
	st, err := structpb.NewStruct(fields)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A containerd that drops each stream as soon as it is live is not redialled at the shortest
// backoff: the backoff starts over only after a session that lasted.
func TestSubscriberBacksOffWhenStreamsDropAtOnce(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	fake := &fakeEvents{subs: map[*fakeSubscription]bool{}, endAfterProbe: true}
	srv := serveFake(t, socket, fake)
	defer srv.Stop()

	m := newMetrics(time.Now)
	sub := newSubscriber(socket, discard, m, func(*types.Envelope) {})
	sub.probeInterval, sub.backoffMin, sub.backoffMax = 10*time.Millisecond, time.Millisecond, 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	sub.run(ctx)
	// Backing off (1, 2, 4, ... 200 ms) allows about 10 sessions in a second; starting over at
	// 1 ms after each would allow hundreds.
	if n := testutil.ToFloat64(m.reconnects); n < 2 || n > 30 {
		t.Errorf("%v re-subscriptions in 1 s of streams dropped at once, want between 2 and 30", n)
	}
}
