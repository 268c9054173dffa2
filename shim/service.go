package shim

import (
	"context"
	"errors"
	"fmt"
	"sync"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
)

// service decorates containerd's runc task service: Create resolves each container's stop policy
// and runtime options, Kill runs the graceful stop, Delete forgets the container. Every other RPC
// goes to the embedded runc service untouched.
type service struct {
	taskAPI.TTRPCTaskService

	// ctx carries the shim's namespace, for publishing events; publisher sends them to containerd.
	ctx       context.Context
	publisher events.Publisher

	mu         sync.Mutex
	containers map[string]*container
}

var _ shim.TTRPCService = (*service)(nil)

// container is what the decorator keeps per container.
type container struct {
	policy Policy
	stop   *stop // the graceful stop in progress, if any
}

// newService wraps the runc task service; stop reports are published through publisher.
func newService(ctx context.Context, runc taskAPI.TTRPCTaskService, publisher events.Publisher) *service {
	return &service{TTRPCTaskService: runc, ctx: ctx, publisher: publisher, containers: map[string]*container{}}
}

// RegisterTTRPC registers the decorator, not the runc service, as the task service, in both task
// API versions: v3 for daemons from 2.0 on, v2 for older ones (and for any daemon that was
// answered with a plain address at start).
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	taskv2.RegisterTTRPCTaskService(server, taskV2{v3: s})
	return nil
}

// UnaryServerInterceptor keeps the runc service's trace propagation to runc.
func (s *service) UnaryServerInterceptor() ttrpc.UnaryServerInterceptor {
	if o, ok := s.TTRPCTaskService.(shim.TTRPCServerUnaryOptioner); ok {
		return o.UnaryServerInterceptor()
	}
	return func(ctx context.Context, u ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
		return m(ctx, u)
	}
}

// Create resolves the container's policy and options, then creates it with the runc service.
// Invalid annotations or options fail here, naming the field and the accepted values.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	settings, err := Resolve(r.Options, r.Bundle)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("graceful: container %s: %w: %w", r.ID, err, errdefs.ErrInvalidArgument))
	}
	r.Options = settings.RuncOptions
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.containers[r.ID] = &container{policy: settings.Policy}
	s.mu.Unlock()
	log.G(ctx).WithField("id", r.ID).Debugf("graceful policy: %s", settings.Policy)
	return resp, nil
}

// Kill runs the graceful stop for a stop signal sent to a container's init; SIGKILL ends any stop
// in progress and is forwarded; every other signal, and any Kill of an exec, is forwarded as is.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if r.ExecID != "" {
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	sig := unix.Signal(r.Signal)
	s.mu.Lock()
	c := s.containers[r.ID]
	if c == nil || c.policy.Passthrough || (sig != unix.SIGKILL && !c.policy.IsStopSignal(sig)) {
		s.mu.Unlock()
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	if sig == unix.SIGKILL {
		aborted := c.stop != nil
		if aborted {
			c.stop.abort()
		}
		s.mu.Unlock()
		resp, err := s.TTRPCTaskService.Kill(ctx, r)
		if err != nil && aborted && errdefs.IsNotFound(errgrpc.ToNative(err)) {
			// Ending the stop let a held init finish exiting first: the SIGKILL did its job.
			return &emptypb.Empty{}, nil
		}
		return resp, err
	}
	if c.stop != nil {
		s.mu.Unlock()
		log.G(ctx).WithField("id", r.ID).Infof("graceful: %s while a stop is in progress: the stop goes on", unix.SignalName(sig))
		return &emptypb.Empty{}, nil
	}
	s.mu.Unlock()

	st, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: r.ID})
	if err != nil || st.Status != task.Status_RUNNING {
		// Not running (created, paused, stopped): the runc service answers as it always has.
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	stop, err := beginStop(r.ID, int(st.Pid), sig, c.policy)
	if err != nil {
		if !errors.Is(err, errForward) {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("graceful: cannot drain, forwarding the signal")
		}
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	s.mu.Lock()
	if c.stop != nil {
		s.mu.Unlock()
		stop.abort()
		return &emptypb.Empty{}, nil
	}
	c.stop = stop
	s.mu.Unlock()
	go func() {
		s.publish(stop.finish())
		s.mu.Lock()
		if c.stop == stop {
			c.stop = nil
		}
		s.mu.Unlock()
	}()
	return &emptypb.Empty{}, nil
}

// Delete forgets the container once the runc service has deleted it.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if err == nil && r.ExecID == "" {
		s.mu.Lock()
		if c := s.containers[r.ID]; c != nil && c.stop != nil {
			c.stop.abort()
		}
		delete(s.containers, r.ID)
		s.mu.Unlock()
	}
	return resp, err
}
