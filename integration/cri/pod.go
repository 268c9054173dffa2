package cri

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Pod is a running pod sandbox.
type Pod struct {
	Env     *Env
	Handler *Handler
	ID      string
	Config  *runtimeapi.PodSandboxConfig
	PIDMode runtimeapi.NamespaceMode

	containers map[string]*Container // by name
	removed    bool
}

// RunPod runs a host-network pod under the handler, with the given PID namespace mode and pod
// annotations; it is stopped and removed at cleanup.
func (env *Env) RunPod(tb testing.TB, h *Handler, pidMode runtimeapi.NamespaceMode, annotations map[string]string) *Pod {
	tb.Helper()
	n := podSeq.Add(1)
	name := stack.NameFor(tb, n)
	if len(name) > 60 {
		name = strings.TrimLeft(name[len(name)-60:], "-")
	}
	logDir := filepath.Join(env.Dir, "logs", name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		tb.Fatal(err)
	}
	p := &Pod{Env: env, Handler: h, PIDMode: pidMode, containers: map[string]*Container{}}
	p.Config = &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: fmt.Sprintf("uid-%d-%d", os.Getpid(), n), Namespace: "graceful-cri"},
		LogDirectory: logDir,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: env.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: pidMode, Ipc: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	ctx, cancel := Context()
	defer cancel()
	resp, err := env.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.Config, RuntimeHandler: h.Name})
	if err != nil {
		tb.Fatalf("RunPodSandbox (handler %s): %v\n%s", h.Name, err, env.LogLines("level=error", "level=warn"))
	}
	p.ID = resp.PodSandboxId
	tb.Cleanup(func() { p.cleanup(tb) })
	return p
}

// cleanup stops and removes the pod unless the test did, and logs what the pod's containers and
// the daemon logged about it when the test failed.
func (p *Pod) cleanup(tb testing.TB) {
	if !p.removed {
		ctx, cancel := Context()
		defer cancel()
		if _, err := p.Env.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.ID}); err != nil {
			tb.Errorf("cleanup: StopPodSandbox: %v", err)
		}
		if _, err := p.Env.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.ID}); err != nil {
			tb.Errorf("cleanup: RemovePodSandbox: %v", err)
		}
	}
	if tb.Failed() {
		for _, c := range p.containers {
			data, _ := os.ReadFile(c.Log)
			tb.Logf("container %s (%s) log:\n%s", c.Name, c.ID, data)
		}
		tb.Logf("containerd log lines of pod %s:\n%s", p.ID, p.Env.LogLines(p.ids()...))
	}
}

// TryRunPod runs a host-network pod under the handler and removes it again; it returns
// RunPodSandbox's error.
func (env *Env) TryRunPod(handler string) error {
	ctx, cancel := Context()
	defer cancel()
	n := podSeq.Add(1)
	config := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: fmt.Sprintf("installer-probe-%d", n), Uid: fmt.Sprintf("uid-probe-%d-%d", os.Getpid(), n), Namespace: "graceful-cri"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: env.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	resp, err := env.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: config, RuntimeHandler: handler})
	if err != nil {
		return err
	}
	env.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: resp.PodSandboxId})
	env.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: resp.PodSandboxId})
	return nil
}

// Tag is the tag of the container's processes: unique to this test process, pod and container.
// A script's @TAG@ stands for it (see Start).
func (p *Pod) Tag(container string) string {
	return fmt.Sprintf("gcri-%d-%s-%s", os.Getpid(), p.Config.Metadata.Name, container)
}

// ProcessesLeft lists the host processes whose command line carries the tag of one of the
// containers (by default, of every container of the pod).
func (p *Pod) ProcessesLeft(containers ...string) []string {
	if containers == nil {
		for name := range p.containers {
			containers = append(containers, name)
		}
	}
	var left []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, name := range containers {
			if bytes.Contains(cmdline, []byte(p.Tag(name)+"\n")) || bytes.Contains(cmdline, []byte(p.Tag(name)+";")) {
				left = append(left, fmt.Sprintf("%s: %q", e.Name(), bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
				break
			}
		}
	}
	return left
}

func (p *Pod) ids() []string {
	ids := []string{p.ID}
	for _, c := range p.containers {
		ids = append(ids, c.ID)
	}
	return ids
}

// Start creates and starts a container running script (sh -c; @TAG@ in it stands for the
// container's Tag) with /out bind-mounted from a new host directory, and the annotations.
func (p *Pod) Start(tb testing.TB, name, script string, annotations map[string]string) *Container {
	tb.Helper()
	return p.StartWith(tb, name, script, annotations, nil)
}

// StartWith is Start with the container config changed by edit, when not nil.
func (p *Pod) StartWith(tb testing.TB, name, script string, annotations map[string]string, edit func(*runtimeapi.ContainerConfig)) *Container {
	tb.Helper()
	out := filepath.Join(p.Env.Dir, "out", p.Config.Metadata.Name, name)
	if err := os.MkdirAll(out, 0o777); err != nil {
		tb.Fatal(err)
	}
	all := map[string]string{"io.kubernetes.pod.terminationGracePeriod": "30"} // as kubelet sets it
	for k, v := range annotations {
		all[k] = v
	}
	config := &runtimeapi.ContainerConfig{
		Metadata:    &runtimeapi.ContainerMetadata{Name: name},
		Image:       &runtimeapi.ImageSpec{Image: stack.ImageName},
		Command:     []string{"sh", "-c", strings.ReplaceAll(script, "@TAG@", p.Tag(name))},
		LogPath:     name + ".log",
		Annotations: all,
		Mounts:      []*runtimeapi.Mount{{ContainerPath: "/out", HostPath: out}},
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: p.PIDMode, Ipc: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	if edit != nil {
		edit(config)
	}
	ctx, cancel := Context()
	defer cancel()
	resp, err := p.Env.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.ID, Config: config, SandboxConfig: p.Config})
	if err != nil {
		tb.Fatalf("CreateContainer %s (handler %s): %v\n%s", name, p.Handler.Name, err, p.Env.LogLines(p.ID))
	}
	c := &Container{ID: resp.ContainerId, Name: name, OutDir: out, Log: filepath.Join(p.Config.LogDirectory, config.LogPath)}
	p.containers[name] = c
	if _, err := p.Env.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ID}); err != nil {
		tb.Fatalf("StartContainer %s (handler %s): %v", name, p.Handler.Name, err)
	}
	if stack.Cgroup2Required() {
		if err := stack.CheckUnified(p.Env.TaskPid(tb, c), c.ID); err != nil {
			tb.Fatal(err)
		}
	}
	return c
}

// TaskPid returns the host pid of the container's init, its task's pid in containerd.
func (env *Env) TaskPid(tb testing.TB, c *Container) int {
	tb.Helper()
	ctx, cancel := Context()
	defer cancel()
	k8s := namespaces.WithNamespace(ctx, stack.CRINamespace)
	container, err := env.Stack.Client.LoadContainer(k8s, c.ID)
	if err != nil {
		tb.Fatalf("load container %s: %v", c.Name, err)
	}
	task, err := container.Task(k8s, nil)
	if err != nil {
		tb.Fatalf("task of container %s: %v", c.Name, err)
	}
	return int(task.Pid())
}

// Stop calls StopContainer with the timeout (in seconds) and returns how long it took.
func (p *Pod) Stop(tb testing.TB, c *Container, timeout int64) time.Duration {
	tb.Helper()
	ctx, cancel := Context()
	defer cancel()
	start := time.Now()
	if _, err := p.Env.Runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c.ID, Timeout: timeout}); err != nil {
		tb.Fatalf("StopContainer %s: %v", c.Name, err)
	}
	return time.Since(start)
}

// Status returns the container's CRI status.
func (p *Pod) Status(tb testing.TB, c *Container) *runtimeapi.ContainerStatus {
	tb.Helper()
	ctx, cancel := Context()
	defer cancel()
	resp, err := p.Env.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ID})
	if err != nil {
		tb.Fatalf("ContainerStatus %s: %v", c.Name, err)
	}
	return resp.GetStatus()
}
