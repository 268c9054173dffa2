package exporter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// ProbeTopic is the topic of the event the exporter publishes to itself to learn that its
// subscription is registered in containerd.
const ProbeTopic = "/graceful/exporter/subscribed"

// The subscriber's timing defaults.
const (
	probeInterval  = time.Second
	probeDeadline  = 10 * time.Second
	publishTimeout = 5 * time.Second
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 2 * time.Second
	maxMessageSize = 16 << 20 // containerd's own limit
)

// subscriber keeps a subscription to containerd's stop reports, across containerd's restarts.
type subscriber struct {
	address string
	log     *slog.Logger
	metrics *metrics
	// handle is given each stop report's envelope, from one goroutine at a time.
	handle func(*types.Envelope)
	now    func() time.Time

	probeInterval, probeDeadline time.Duration
	backoffMin, backoffMax       time.Duration

	live atomic.Bool
	// onLive, if set, is called after every change of live (tests).
	onLive func(live bool)
}

func newSubscriber(address string, log *slog.Logger, m *metrics, handle func(*types.Envelope)) *subscriber {
	return &subscriber{address: address, log: log, metrics: m, handle: handle, now: time.Now,
		probeInterval: probeInterval, probeDeadline: probeDeadline, backoffMin: backoffMin, backoffMax: backoffMax}
}

// Live reports whether the subscription is registered in containerd (the probe came back) and
// its stream is open.
func (s *subscriber) Live() bool { return s.live.Load() }

func (s *subscriber) setLive(live bool) {
	s.live.Store(live)
	if live {
		s.metrics.connected.Set(1)
	} else {
		s.metrics.connected.Set(0)
	}
	if s.onLive != nil {
		s.onLive(live)
	}
}

// run subscribes, and subscribes again with a backoff whenever the dial, the subscription or its
// stream fails, until ctx ends.
func (s *subscriber) run(ctx context.Context) {
	backoff := s.backoffMin
	subscribed := false // once at least
	failures := 0       // since the last subscription
	for {
		var liveAt time.Time
		err := s.session(ctx, func() {
			s.metrics.disconnected.restored(s.now())
			if subscribed {
				s.metrics.reconnects.Inc()
			}
			subscribed = true
			liveAt = s.now()
			s.setLive(true)
			s.log.Info("subscribed", "address", s.address, "topic", StopTopic)
		})
		// The backoff starts over only after a session that lasted: a containerd that accepts
		// streams and drops them at once is not redialled every backoffMin.
		if !liveAt.IsZero() && s.now().Sub(liveAt) >= s.backoffMax {
			backoff, failures = s.backoffMin, 0
		}
		if ctx.Err() != nil {
			if s.live.Load() {
				s.setLive(false)
			}
			return
		}
		switch {
		case s.live.Load():
			s.setLive(false)
			s.metrics.disconnected.lost(s.now())
			s.log.Warn("lost containerd's event stream; subscribing again", "address", s.address, "error", err)
		case failures == 0:
			s.log.Warn("cannot subscribe to containerd's events; retrying", "address", s.address, "error", err)
		default:
			s.log.Debug("cannot subscribe to containerd's events; retrying", "address", s.address,
				"error", err, "failures", failures+1)
		}
		failures++
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.backoffMax)
	}
}

// session dials containerd, subscribes, and probes the subscription; once the probe comes back it
// calls onLive, and it returns when the stream fails or ctx ends.
func (s *subscriber) session(ctx context.Context, onLive func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, err := grpc.NewClient(dialTarget(s.address),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)))
	if err != nil {
		return fmt.Errorf("dial containerd at %s: %w", s.address, err)
	}
	defer conn.Close()
	client := eventsapi.NewEventsClient(conn)
	// No namespace: the subscription gets the events of every namespace.
	stream, err := client.Subscribe(ctx, &eventsapi.SubscribeRequest{
		Filters: []string{fmt.Sprintf("topic==%q", StopTopic), fmt.Sprintf("topic==%q", ProbeTopic)}})
	if err != nil {
		return fmt.Errorf("subscribe to containerd's events: %w", err)
	}
	token, err := newToken()
	if err != nil {
		return err
	}

	probed := make(chan struct{})
	received := make(chan struct{}) // closed when receive returns, with recvErr set
	var recvErr error
	go func() {
		defer close(received)
		recvErr = s.receive(stream, token, probed)
	}()
	defer func() {
		cancel()
		<-received
	}()

	if err := s.probe(ctx, client, token, probed, received); err != nil {
		if isClosed(received) {
			return fmt.Errorf("receive containerd's events: %w", recvErr)
		}
		return err
	}
	onLive()
	select {
	case <-received:
		return fmt.Errorf("receive containerd's events: %w", recvErr)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// receive passes the stream's stop reports to handle, and closes probed when the probe with token
// comes back. It returns the stream's error.
func (s *subscriber) receive(stream eventsapi.Events_SubscribeClient, token string, probed chan struct{}) error {
	var once sync.Once
	for {
		env, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("containerd ended the stream")
		}
		if err != nil {
			return err
		}
		switch env.GetTopic() {
		case StopTopic:
			s.handle(env)
		case ProbeTopic:
			if probeToken(env) == token {
				once.Do(func() { close(probed) })
			}
		}
	}
}

// probe publishes the probe event with token once per probeInterval until it comes back
// (probed is closed), the stream ends (received is closed), ctx ends, or probeDeadline passes.
func (s *subscriber) probe(ctx context.Context, client eventsapi.EventsClient, token string, probed, received <-chan struct{}) error {
	deadline := time.NewTimer(s.probeDeadline)
	defer deadline.Stop()
	tick := time.NewTicker(s.probeInterval)
	defer tick.Stop()
	for {
		if err := publishProbe(ctx, client, token); err != nil {
			s.log.Debug("cannot publish the subscription probe", "error", err)
		}
		select {
		case <-probed:
			return nil
		case <-received:
			return errors.New("the stream ended before the probe came back")
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("the subscription probe did not come back within %s", s.probeDeadline)
		case <-tick.C:
		}
	}
}

// publishProbe publishes a probe event carrying token, in containerd namespace "default".
func publishProbe(ctx context.Context, client eventsapi.EventsClient, token string) error {
	payload, err := structpb.NewStruct(map[string]any{"token": token})
	if err != nil {
		return fmt.Errorf("probe event: %w", err)
	}
	ev, err := typeurl.MarshalAnyToProto(payload)
	if err != nil {
		return fmt.Errorf("probe event: %w", err)
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, namespaces.Default), publishTimeout)
	defer cancel()
	if _, err := client.Publish(ctx, &eventsapi.PublishRequest{Topic: ProbeTopic, Event: ev}); err != nil {
		return fmt.Errorf("publish %s: %w", ProbeTopic, err)
	}
	return nil
}

// probeToken returns the token of a probe event, "" if it has none.
func probeToken(env *types.Envelope) string {
	if env.GetEvent() == nil {
		return ""
	}
	v, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		return ""
	}
	st, ok := v.(*structpb.Struct)
	if !ok {
		return ""
	}
	return st.GetFields()["token"].GetStringValue()
}

// newToken returns a random token that tells this subscription's probe from others'.
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("probe token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// dialTarget is the gRPC target of containerd's socket at address.
func dialTarget(address string) string {
	address = strings.TrimPrefix(address, "unix://")
	if filepath.IsAbs(address) {
		return "unix://" + address
	}
	return "unix:" + address
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
