package shim

import (
	"context"
	"fmt"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// taskV2 serves the task API v2 (containerd.task.v2.Task), which daemons before 2.0 speak and
// later daemons speak to shims that answered the start bootstrap with a plain address, on top of
// the v3 service. The two APIs have the same messages under different package names, so each
// request and response is carried over by its wire form.
type taskV2 struct{ v3 taskAPI.TTRPCTaskService }

var _ taskv2.TTRPCTaskService = taskV2{}

// bridge converts a v2 request to v3, calls the v3 method and converts its response back.
func bridge[Q3, R3, R2 proto.Message](ctx context.Context, in proto.Message, q Q3, call func(context.Context, Q3) (R3, error), out R2) (R2, error) {
	var zero R2
	if err := convert(in, q); err != nil {
		return zero, err
	}
	r, err := call(ctx, q)
	if err != nil {
		return zero, err
	}
	if err := convert(r, out); err != nil {
		return zero, err
	}
	return out, nil
}

func convert(from, to proto.Message) error {
	data, err := proto.Marshal(from)
	if err != nil {
		return fmt.Errorf("task API v2 bridge: marshal %T: %w", from, err)
	}
	if err := proto.Unmarshal(data, to); err != nil {
		return fmt.Errorf("task API v2 bridge: unmarshal %T: %w", to, err)
	}
	return nil
}

func (t taskV2) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	return bridge(ctx, r, &taskAPI.StateRequest{}, t.v3.State, &taskv2.StateResponse{})
}

func (t taskV2) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	return bridge(ctx, r, &taskAPI.CreateTaskRequest{}, t.v3.Create, &taskv2.CreateTaskResponse{})
}

func (t taskV2) Start(ctx context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	return bridge(ctx, r, &taskAPI.StartRequest{}, t.v3.Start, &taskv2.StartResponse{})
}

func (t taskV2) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	return bridge(ctx, r, &taskAPI.DeleteRequest{}, t.v3.Delete, &taskv2.DeleteResponse{})
}

func (t taskV2) Pids(ctx context.Context, r *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	return bridge(ctx, r, &taskAPI.PidsRequest{}, t.v3.Pids, &taskv2.PidsResponse{})
}

func (t taskV2) Pause(ctx context.Context, r *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.PauseRequest{}, t.v3.Pause, &emptypb.Empty{})
}

func (t taskV2) Resume(ctx context.Context, r *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.ResumeRequest{}, t.v3.Resume, &emptypb.Empty{})
}

func (t taskV2) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.CheckpointTaskRequest{}, t.v3.Checkpoint, &emptypb.Empty{})
}

func (t taskV2) Kill(ctx context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.KillRequest{}, t.v3.Kill, &emptypb.Empty{})
}

func (t taskV2) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.ExecProcessRequest{}, t.v3.Exec, &emptypb.Empty{})
}

func (t taskV2) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.ResizePtyRequest{}, t.v3.ResizePty, &emptypb.Empty{})
}

func (t taskV2) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.CloseIORequest{}, t.v3.CloseIO, &emptypb.Empty{})
}

func (t taskV2) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.UpdateTaskRequest{}, t.v3.Update, &emptypb.Empty{})
}

func (t taskV2) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	return bridge(ctx, r, &taskAPI.WaitRequest{}, t.v3.Wait, &taskv2.WaitResponse{})
}

func (t taskV2) Stats(ctx context.Context, r *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return bridge(ctx, r, &taskAPI.StatsRequest{}, t.v3.Stats, &taskv2.StatsResponse{})
}

func (t taskV2) Connect(ctx context.Context, r *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	return bridge(ctx, r, &taskAPI.ConnectRequest{}, t.v3.Connect, &taskv2.ConnectResponse{})
}

func (t taskV2) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	return bridge(ctx, r, &taskAPI.ShutdownRequest{}, t.v3.Shutdown, &emptypb.Empty{})
}
