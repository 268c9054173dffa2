package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/graceful-shim/graceful/process"
)

// service decorates containerd's runc task service: Create resolves each container's stop policy,
// Kill runs the graceful stop, Delete forgets the container; other RPCs go to runc untouched.
type service struct {
	taskAPI.TTRPCTaskService

	// ctx carries the shim's namespace, for publishing events; publisher sends them to containerd.
	ctx       context.Context
	publisher events.Publisher
	// containerdAddress (gRPC) and namespace locate the container records (a recorded stop signal).
	containerdAddress, namespace string

	// exits tells when a container's exit event has been published (nil: not known).
	exits *exitEvents
	// reports counts the stop reports still to publish; shutdown waits for them (awaitReports).
	reports sync.WaitGroup

	mu         sync.Mutex
	containers map[string]*container
}

var _ shim.TTRPCService = (*service)(nil)

// container is what the decorator keeps per container.
type container struct {
	policy Policy
	// workload is the container's pod and name under Kubernetes (nil otherwise).
	workload *Workload
	stop     *stop // the graceful stop in progress, if any
	// main follows the main process under graceful-init (nil without it, or before Start).
	main *mainWatch
	// resumeGC ends the garbage collector's pause of the container's last stop (see pauseGC).
	resumeGC func()
}

// newService wraps the runc task service; stop reports are published through publisher.
// exits, if not nil, is the runc service's publisher, which tells when an exit event went out.
func newService(ctx context.Context, runc taskAPI.TTRPCTaskService, publisher events.Publisher, exits *exitEvents, containerdAddress string) *service {
	// A stop opens hundreds of pidfds: grow the descriptor table now, off the stop's path.
	go process.ReserveDescriptors(process.DrainDescriptors)
	if k := process.EmulatedKernel(); k != (process.KernelRelease{}) {
		log.G(ctx).Warnf("graceful: a kernelemu test build behaving as Linux %s", k)
	}
	ns, _ := namespaces.Namespace(ctx)
	return &service{TTRPCTaskService: runc, ctx: ctx, publisher: publisher, exits: exits, containers: map[string]*container{},
		containerdAddress: containerdAddress, namespace: ns}
}

// awaitReports, a shutdown callback, waits until every started stop has published its report (or
// ctx is done), so that a container deleted right after its exit keeps its report.
func (s *service) awaitReports(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.reports.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		log.G(s.ctx).Warn("graceful: shutting down before every stop report was published")
	}
	return nil
}

// RegisterTTRPC registers the decorator as the task service in both API versions: v3 for daemons
// from 2.0 on, v2 for older ones (and any daemon answered with a plain address at start).
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	registerTaskV2(server, s)
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
	if !settings.Policy.Passthrough {
		// Below the minimum kernel every stop would quietly be the stock shim's: say so now.
		if err := process.CheckKernel(); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("graceful: container %s: %w: %w", r.ID, err, errdefs.ErrFailedPrecondition))
		}
	}
	var recorded *stopSignalLookup
	if !settings.Policy.Passthrough && !settings.Policy.StopSignalsSet {
		recorded = lookupStopSignal(s.containerdAddress, s.namespace, r.ID)
	}
	if settings.Policy.Init {
		if err := wrapWithInit(r.Bundle, settings.Policy.InitPath, InitCopyDir); err != nil {
			if recorded != nil {
				recorded.stop()
			}
			return nil, errgrpc.ToGRPC(fmt.Errorf("graceful: container %s: %w: %w", r.ID, err, errdefs.ErrFailedPrecondition))
		}
	}
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		if recorded != nil {
			recorded.stop()
		}
		return nil, err
	}
	if recorded != nil {
		rs := recorded.result(ctx)
		if rs.Error != "" {
			log.G(ctx).WithField("id", r.ID).Warnf("graceful: cannot read the container's recorded stop signal: %s", rs.Error)
		}
		var added bool
		if settings.Policy, added = settings.Policy.WithRecordedStopSignal(rs.Signal); added {
			log.G(ctx).WithField("id", r.ID).Infof("graceful: %s (from %s) drains too", process.SignalName(rs.Signal), rs.Where)
		}
	}
	s.mu.Lock()
	s.containers[r.ID] = &container{policy: settings.Policy, workload: settings.Workload}
	s.mu.Unlock()
	log.G(ctx).WithField("id", r.ID).Debugf("graceful policy: %s", settings.Policy)
	return resp, nil
}

// Kill carries out decideKill (plan.go) for a signal to a container's init; an exec's is forwarded.
// A stop is claimed under the lock first, so that concurrent Kills start at most one.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if r.ExecID != "" {
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	sig := unix.Signal(r.Signal)
	s.mu.Lock()
	c := s.containers[r.ID]
	if c == nil {
		s.mu.Unlock()
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	var inProgress StopOrder
	if c.stop != nil {
		inProgress = c.stop.inProgress
	}
	action := decideKill(c.policy, sig, inProgress)
	var claimed *stop
	switch action {
	case AbortAndForward:
		c.stop.abort()
	case StartStop:
		claimed = newStop(r.ID, c.workload, sig, c.policy)
		claimed.exitPublished = s.exits.published(r.ID)
		c.stop = claimed
	}
	s.mu.Unlock()

	logger := log.G(ctx).WithField("id", r.ID)
	switch action {
	case AbortAndForward:
		resp, err := s.TTRPCTaskService.Kill(ctx, r)
		if err != nil && errdefs.IsNotFound(errgrpc.ToNative(err)) {
			// Ending the stop let a held init finish exiting first: the SIGKILL did its job.
			return &emptypb.Empty{}, nil
		}
		return resp, err
	case Absorb:
		logger.Infof("graceful: %s while a %s stop is in progress: init gets it in order", unix.SignalName(sig), inProgress)
		return &emptypb.Empty{}, nil
	case ForwardToInit:
		logger.Infof("graceful: %s repeated during an init-first stop: forwarded to init", unix.SignalName(sig))
	case StartStop:
		return s.startStop(ctx, r, c, claimed)
	}
	return s.TTRPCTaskService.Kill(ctx, r)
}

// startStop begins the stop that Kill claimed, and finishes it in the background.
func (s *service) startStop(ctx context.Context, r *taskAPI.KillRequest, c *container, st *stop) (*emptypb.Empty, error) {
	started := false
	resumeGC := pauseGC()
	s.mu.Lock()
	if c.resumeGC != nil {
		c.resumeGC() // that stop is over
	}
	c.resumeGC = resumeGC
	s.mu.Unlock()
	defer func() {
		if !started {
			s.unclaim(c, st)
			resumeGC()
		}
	}()
	state, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: r.ID})
	if decideBegin(err == nil && state.Status == task.Status_RUNNING) == Forward {
		st.close()
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	var mainExit <-chan struct{}
	s.mu.Lock()
	main := c.main
	s.mu.Unlock()
	if main != nil {
		main.awaitFound()
		mainExit = main.exited
	}
	started, report := st.begin(int(state.Pid), mainExit)
	s.mu.Lock()
	st.inProgress = st.order
	s.mu.Unlock()
	if started {
		st.settle(true) // one given up settles as it is unclaimed
	}
	if !started {
		s.publish(report)
		if st.aborted.Load() {
			// A SIGKILL came while the stop was being planned, and was forwarded.
			return &emptypb.Empty{}, nil
		}
		return s.TTRPCTaskService.Kill(ctx, r)
	}
	s.reports.Add(1)
	go func() {
		defer s.reports.Done()
		s.publish(st.finish())
		s.unclaim(c, st)
		// Init's exit is handled, and the container deleted, right after: the collector waits
		// for the Delete, or runs again stopPauseGCFor from now.
		time.AfterFunc(stopPauseGCFor, resumeGC)
	}()
	return &emptypb.Empty{}, nil
}

// unclaim forgets st as the container's stop in progress.
func (s *service) unclaim(c *container, st *stop) {
	s.mu.Lock()
	if c.stop == st {
		c.stop = nil
	}
	s.mu.Unlock()
	st.settle(false) // no-op for a stop that began
}

// Delete forgets the container once the runc service has deleted it.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if err == nil && r.ExecID == "" {
		s.mu.Lock()
		if c := s.containers[r.ID]; c != nil {
			if c.stop != nil {
				c.stop.abort()
			}
			if c.main != nil {
				c.main.cancel()
			}
			if c.resumeGC != nil {
				c.resumeGC()
			}
		}
		delete(s.containers, r.ID)
		s.exits.forget(r.ID)
		s.mu.Unlock()
	}
	return resp, err
}
