package docker

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// Spec is a test container: a busybox shell script under a runtime of dockerd.
type Spec struct {
	Runtime     string
	Image       string // default Image
	Script      string
	Annotations map[string]string
	StopSignal  string // docker run --stop-signal
	Init        bool   // docker run --init: init-path's binary as PID 1
}

// Container is a started test container.
type Container struct {
	ID, Name string
	OutDir   string // host side of /out
	Output   *stack.Output
}

// containerSeq numbers the containers of the test process.
var containerSeq atomic.Int64

// Run creates and starts a container (docker run -d --runtime R --network none -v OUT:/out) and
// waits for its "ready" line; it is removed at cleanup.
func (d *Env) Run(tb testing.TB, spec Spec) *Container {
	tb.Helper()
	ctx := context.Background()
	name := stack.NameFor(tb, containerSeq.Add(1))
	c := &Container{Name: name, OutDir: filepath.Join(d.Dir, "out", name), Output: stack.NewOutput()}
	if err := os.MkdirAll(c.OutDir, 0o777); err != nil {
		tb.Fatal(err)
	}
	if spec.Image == "" {
		spec.Image = Image
	}
	created, err := d.Client.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:      spec.Image,
			Cmd:        []string{"sh", "-c", spec.Script},
			StopSignal: spec.StopSignal,
		},
		HostConfig: &container.HostConfig{
			Runtime:     spec.Runtime,
			NetworkMode: "none",
			Binds:       []string{c.OutDir + ":/out"},
			Annotations: spec.Annotations,
			Init:        &spec.Init,
		},
	})
	if err != nil {
		tb.Fatalf("create %s: %v", name, err)
	}
	c.ID = created.ID
	d.ids = append(d.ids, c.ID)
	tb.Cleanup(func() {
		if _, err := d.Client.ContainerRemove(context.Background(), c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			tb.Errorf("remove %s: %v", name, err)
		}
	})
	if _, err := d.Client.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	logs, err := d.Client.ContainerLogs(ctx, c.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		tb.Fatal(err)
	}
	copied := make(chan struct{})
	go func() { stdcopy.StdCopy(c.Output, c.Output, logs); close(copied) }()
	tb.Cleanup(func() { logs.Close(); <-copied })
	c.WaitLines(tb, "ready")
	if rt := d.Inspect(tb, c).HostConfig.Runtime; rt != spec.Runtime {
		tb.Fatalf("container runtime %q, want %q", rt, spec.Runtime)
	}
	return c
}

// WaitLines waits up to 20s for each of lines in the container's output.
func (c *Container) WaitLines(tb testing.TB, lines ...string) {
	tb.Helper()
	for _, l := range lines {
		if err := c.Output.WaitLine(l, 20*time.Second); err != nil {
			tb.Fatalf("%s: %v", c.Name, err)
		}
	}
}

// Marker returns the content of /out/name, or "" when the container did not write it.
func (c *Container) Marker(name string) string { return stack.ReadMarker(c.OutDir, name) }

// Inspect is docker inspect.
func (d *Env) Inspect(tb testing.TB, c *Container) container.InspectResponse {
	tb.Helper()
	res, err := d.Client.ContainerInspect(context.Background(), c.ID, client.ContainerInspectOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return res.Container
}

// ExpectInit fails the test unless the container's PID 1 is docker's init (init-path's binary,
// which docker mounts as /sbin/docker-init), with the main process as its child.
func (d *Env) ExpectInit(tb testing.TB, c *Container) {
	tb.Helper()
	st, err := process.ReadStatus(d.Inspect(tb, c).State.Pid)
	if err != nil || st.Name != "docker-init" {
		tb.Fatalf("the container's PID 1 is %q (%v), want docker-init", st.Name, err)
	}
}

// Stop is docker stop -t timeout: it returns how long the call took and init's exit code, and
// fails the test unless the container is then exited.
func (d *Env) Stop(tb testing.TB, c *Container, timeout int) (time.Duration, int) {
	tb.Helper()
	if st := d.Inspect(tb, c).State; !st.Running {
		tb.Fatalf("%s is %s before the stop, want running", c.Name, st.Status)
	}
	start := time.Now()
	if _, err := d.Client.ContainerStop(context.Background(), c.ID, client.ContainerStopOptions{Timeout: &timeout}); err != nil {
		tb.Fatalf("stop %s: %v", c.Name, err)
	}
	took := time.Since(start)
	st := d.Inspect(tb, c).State
	if st.Running || st.Status != container.StateExited {
		tb.Fatalf("%s is %s after docker stop, want exited", c.Name, st.Status)
	}
	return took, st.ExitCode
}
