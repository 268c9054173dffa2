package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Spec describes a test container: a busybox shell script with /out bind-mounted from a host
// directory, under one runtime.
type Spec struct {
	ID          string
	Runtime     string
	Script      string // run as sh -c Script; Args wins when set
	Args        []string
	Annotations map[string]string
	// RuntimeOptions are the runtime options containerd passes to the shim (nil for none).
	RuntimeOptions any
	// HostPID runs the container in the host's PID namespace.
	HostPID bool
	// PIDNamespace, when set, is the path of a PID namespace to join (as a pod's containers join
	// the sandbox's): /proc/PID/ns/pid.
	PIDNamespace string
	// Mounts are added to the /out bind mount.
	Mounts []specs.Mount
	// Labels are set on the container record (e.g. the stop-signal label that ctr run sets).
	Labels map[string]string
	// Terminal gives the process a terminal (its output then comes through the pty).
	Terminal bool
	// ReadonlyRootfs mounts the rootfs read-only; User ("uid" or "uid:gid") runs the process as
	// that user.
	ReadonlyRootfs bool
	User           string
	// Rootfs, when set, is a host directory to run from instead of the busybox image, mounted
	// read-only (as ctr run --rootfs does); Env is added to the default environment.
	Rootfs string
	Env    []string
	// HostNetwork runs the container in the host's network namespace.
	HostNetwork bool
}

// Container is a created test container and its task.
type Container struct {
	ID     string
	OutDir string // host side of /out
	Task   containerd.Task
	Output *Output
	Exit   <-chan containerd.ExitStatus

	c containerd.Container
}

func containerdNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, Namespace)
}

// Create creates the container and its task, without starting it.
func (s *Stack) Create(ctx context.Context, spec Spec) (_ *Container, retErr error) {
	ctx = containerdNamespace(ctx)
	out := filepath.Join(s.Dir, "out", spec.ID)
	if err := os.MkdirAll(out, 0o777); err != nil {
		return nil, err
	}
	// Writable by a container's unprivileged user too (Spec.User).
	if err := os.Chmod(out, 0o777); err != nil {
		return nil, err
	}
	args := spec.Args
	if args == nil {
		args = []string{"sh", "-c", spec.Script}
	}
	mounts := append([]specs.Mount{{Destination: "/out", Type: "bind", Source: out, Options: []string{"rbind", "rw"}}}, spec.Mounts...)
	var specOpts []oci.SpecOpts
	if spec.Rootfs == "" {
		specOpts = append(specOpts, oci.WithImageConfig(s.Image))
	} else {
		specOpts = append(specOpts, oci.WithRootFSPath(spec.Rootfs), oci.WithRootFSReadonly())
	}
	specOpts = append(specOpts,
		oci.WithProcessArgs(args...),
		oci.WithMounts(mounts),
		oci.WithAnnotations(spec.Annotations),
		oci.WithEnv(spec.Env),
	)
	if spec.HostNetwork {
		specOpts = append(specOpts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	if spec.HostPID {
		specOpts = append(specOpts, oci.WithHostNamespace(specs.PIDNamespace))
	}
	if spec.Terminal {
		specOpts = append(specOpts, oci.WithTTY)
	}
	if spec.ReadonlyRootfs {
		specOpts = append(specOpts, oci.WithRootFSReadonly())
	}
	if spec.User != "" {
		specOpts = append(specOpts, oci.WithUser(spec.User))
	}
	if spec.PIDNamespace != "" {
		specOpts = append(specOpts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.PIDNamespace, Path: spec.PIDNamespace}))
	}
	if Cgroup2() {
		specOpts = append(specOpts, WithoutCPUAndMemory)
	}
	var snapshot []containerd.NewContainerOpts
	if spec.Rootfs == "" {
		snapshot = append(snapshot, containerd.WithNewSnapshot(spec.ID, s.Image))
	}
	c, err := s.Client.NewContainer(ctx, spec.ID, append(snapshot,
		containerd.WithNewSpec(specOpts...),
		containerd.WithRuntime(spec.Runtime, spec.RuntimeOptions),
		containerd.WithContainerLabels(spec.Labels),
	)...)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	defer func() {
		if retErr != nil {
			c.Delete(ctx, containerd.WithSnapshotCleanup)
		}
	}()
	output := NewOutput()
	ioOpts := []cio.Opt{cio.WithStreams(nil, output, output)}
	if spec.Terminal {
		ioOpts = append(ioOpts, cio.WithTerminal)
	}
	task, err := c.NewTask(ctx, cio.NewCreator(ioOpts...))
	if err != nil {
		return nil, fmt.Errorf("create task %s: %w", spec.ID, err)
	}
	exit, err := task.Wait(ctx)
	if err != nil {
		task.Delete(ctx, containerd.WithProcessKill)
		return nil, err
	}
	return &Container{ID: spec.ID, OutDir: out, Task: task, Output: output, Exit: exit, c: c}, nil
}

// Run creates and starts the container.
func (s *Stack) Run(ctx context.Context, spec Spec) (*Container, error) {
	c, err := s.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := c.Task.Start(containerdNamespace(ctx)); err != nil {
		c.Delete()
		return nil, fmt.Errorf("start task %s: %w", spec.ID, err)
	}
	if Cgroup2Required() {
		if err := CheckUnified(int(c.Task.Pid()), spec.ID); err != nil {
			c.Delete()
			return nil, err
		}
	}
	return c, nil
}

// Stop sends sig to the container's init (as docker stop and kubelet do) and waits up to timeout
// for the task to exit. It returns how long the exit took after the Kill call.
func (c *Container) Stop(ctx context.Context, sig syscall.Signal, timeout time.Duration) (time.Duration, containerd.ExitStatus, error) {
	ctx = containerdNamespace(ctx)
	start := time.Now()
	if err := c.Task.Kill(ctx, sig); err != nil {
		return 0, containerd.ExitStatus{}, fmt.Errorf("kill %s: %w", c.ID, err)
	}
	return c.WaitExit(start, timeout)
}

// WaitExit waits up to timeout for the task to exit and returns the time since start.
func (c *Container) WaitExit(start time.Time, timeout time.Duration) (time.Duration, containerd.ExitStatus, error) {
	select {
	case st := <-c.Exit:
		return time.Since(start), st, nil
	case <-time.After(timeout):
		return time.Since(start), containerd.ExitStatus{}, ErrStillRunning
	}
}

// ErrStillRunning reports a task that did not exit in time.
var ErrStillRunning = errors.New("task still running")

// Marker returns the content of /out/name, or "" when the container did not write it.
func (c *Container) Marker(name string) string { return ReadMarker(c.OutDir, name) }

// Delete kills what is left of the task and removes the container and its snapshot.
func (c *Container) Delete() error {
	ctx, cancel := context.WithTimeout(containerdNamespace(context.Background()), 30*time.Second)
	defer cancel()
	return forceDelete(ctx, c.c)
}

func forceDelete(ctx context.Context, c containerd.Container) error {
	if task, err := c.Task(ctx, nil); err == nil {
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
			return fmt.Errorf("delete task %s: %w", c.ID(), err)
		}
	}
	return c.Delete(ctx, containerd.WithSnapshotCleanup)
}

// Output collects a task's stdout and stderr and lets a test wait for a line.
type Output struct {
	mu      sync.Mutex
	buf     strings.Builder
	changed chan struct{}
}

// NewOutput returns an empty Output, for any writer a test wants to wait on.
func NewOutput() *Output { return &Output{changed: make(chan struct{})} }

// Write implements io.Writer.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// WaitLine waits until a line equal to want has been written, or timeout passes.
func (o *Output) WaitLine(want string, timeout time.Duration) error {
	return o.wait(func(line string) bool { return strings.TrimSpace(line) == want }, fmt.Sprintf("no line %q", want), timeout)
}

// WaitContains waits until a line containing part has been written, or timeout passes.
func (o *Output) WaitContains(part string, timeout time.Duration) error {
	return o.wait(func(line string) bool { return strings.Contains(line, part) }, fmt.Sprintf("no line with %q", part), timeout)
}

// wait waits until a line matches, or timeout passes.
func (o *Output) wait(match func(string) bool, missing string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		o.mu.Lock()
		text, changed := o.buf.String(), o.changed
		o.mu.Unlock()
		for _, line := range strings.Split(text, "\n") {
			if match(line) {
				return nil
			}
		}
		select {
		case <-changed:
		case <-deadline:
			return fmt.Errorf("%s after %v; output: %q", missing, timeout, text)
		}
	}
}

// Exec starts args as an exec process of the task (as `ctr task exec`, with the container's
// environment and user), and returns its output and its exit.
func (c *Container) Exec(ctx context.Context, id string, args ...string) (*Output, <-chan containerd.ExitStatus, error) {
	ctx = containerdNamespace(ctx)
	spec, err := c.c.Spec(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("spec of %s: %w", c.ID, err)
	}
	p := *spec.Process
	p.Args, p.Terminal = args, false
	out := NewOutput()
	proc, err := c.Task.Exec(ctx, id, &p, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		return nil, nil, fmt.Errorf("exec %s in %s: %w", id, c.ID, err)
	}
	exit, err := proc.Wait(ctx)
	if err != nil {
		proc.Delete(ctx, containerd.WithProcessKill)
		return nil, nil, err
	}
	if err := proc.Start(ctx); err != nil {
		proc.Delete(ctx, containerd.WithProcessKill)
		return nil, nil, fmt.Errorf("start exec %s in %s: %w", id, c.ID, err)
	}
	return out, exit, nil
}
