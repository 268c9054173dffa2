package shim

import (
	"encoding/json"
	"fmt"

	"github.com/containerd/log"
	"google.golang.org/protobuf/types/known/structpb"
)

// StopEventTopic is the containerd event topic of stop reports (`ctr events` shows them).
const StopEventTopic = "/graceful/stop"

// stopEvent turns a report into the structured event published on StopEventTopic.
func stopEvent(r *StopReport) (*structpb.Struct, error) {
	var fields map[string]any
	if err := json.Unmarshal(r.encode(), &fields); err != nil {
		return nil, err
	}
	ev, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, fmt.Errorf("stop report event: %w", err)
	}
	return ev, nil
}

// publish sends a stop report to containerd's event stream.
func (s *service) publish(r *StopReport) {
	if r == nil || s.publisher == nil {
		return
	}
	ev, err := stopEvent(r)
	if err == nil {
		err = s.publisher.Publish(s.ctx, StopEventTopic, ev)
	}
	if err != nil {
		log.G(s.ctx).WithError(err).WithField("id", r.ContainerID).Warn("graceful: publish stop report")
	}
}
