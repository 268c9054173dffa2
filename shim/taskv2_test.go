package shim

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// echoTasks answers State with the request's ids and remembers the last Kill; its other methods
// are the embedded nil interface's (never called).
type echoTasks struct {
	taskAPI.TTRPCTaskService
	killed *taskAPI.KillRequest
}

func (e *echoTasks) Pids(context.Context, *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	return nil, errdefs.ErrNotImplemented
}

func (e *echoTasks) State(_ context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	return &taskAPI.StateResponse{ID: r.ID, ExecID: r.ExecID, Pid: 42, Status: task.Status_RUNNING}, nil
}

func (e *echoTasks) Kill(_ context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	e.killed = r
	return &emptypb.Empty{}, nil
}

// A daemon speaking the task API v2 reaches the v3 methods, requests and responses intact.
func TestTaskAPIv2IsServedByTheV3Methods(t *testing.T) {
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	svc := &echoTasks{}
	registerTaskV2(server, svc)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	go server.Serve(context.Background(), l)
	defer server.Close()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	v2 := taskv2.NewTTRPCTaskClient(client)

	ctx := context.Background()
	st, err := v2.State(ctx, &taskv2.StateRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != "c1" || st.ExecID != "e1" || st.Pid != 42 || st.Status != task.Status_RUNNING {
		t.Fatalf("State answered %v", st)
	}
	if _, err := v2.Kill(ctx, &taskv2.KillRequest{ID: "c1", Signal: 15, All: true}); err != nil {
		t.Fatal(err)
	}
	if k := svc.killed; k == nil || k.ID != "c1" || k.Signal != 15 || !k.All {
		t.Fatalf("Kill reached the v3 method as %v", k)
	}
	// A v3 method's error comes back as the v2 method's.
	if _, err := v2.Pids(ctx, &taskv2.PidsRequest{ID: "c1"}); err == nil {
		t.Fatal("the error was lost")
	}
}
