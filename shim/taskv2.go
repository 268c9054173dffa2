package shim

import (
	"context"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// taskV2Service is the task API v2's service name, which daemons before 2.0 speak, and later
// daemons speak to shims that answered the start bootstrap with a plain address.
const taskV2Service = "containerd.task.v2.Task"

// registerTaskV2 serves the task API v2 with svc's v3 methods. The two APIs have the same
// messages under different protobuf package names, so a v2 request decodes into its v3 message
// and a v3 response encodes as its v2 one; linking the v2 API's generated package instead would
// register its descriptors in every shim (about 25 KB of each idle shim's heap).
func registerTaskV2(server *ttrpc.Server, svc taskAPI.TTRPCTaskService) {
	server.RegisterService(taskV2Service, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"State":      method(svc.State),
		"Create":     method(svc.Create),
		"Start":      method(svc.Start),
		"Delete":     method(svc.Delete),
		"Pids":       method(svc.Pids),
		"Pause":      method(svc.Pause),
		"Resume":     method(svc.Resume),
		"Checkpoint": method(svc.Checkpoint),
		"Kill":       method(svc.Kill),
		"Exec":       method(svc.Exec),
		"ResizePty":  method(svc.ResizePty),
		"CloseIO":    method(svc.CloseIO),
		"Update":     method(svc.Update),
		"Wait":       method(svc.Wait),
		"Stats":      method(svc.Stats),
		"Connect":    method(svc.Connect),
		"Shutdown":   method(svc.Shutdown),
	}})
}

// method is a ttrpc method that decodes its request into a new Q and calls call.
func method[Q any, PQ interface {
	*Q
	proto.Message
}, R any](call func(context.Context, PQ) (R, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		req := PQ(new(Q))
		if err := unmarshal(req); err != nil {
			return nil, err
		}
		return call(ctx, req)
	}
}
