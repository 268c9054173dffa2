package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// The CRI tests run a private containerd of their own (not the shared one of TestMain) with the
// CRI plugin configured for the graceful shim in both forms a Kubernetes node can use, and drive
// it as the kubelet does, through the CRI gRPC API: host-network pods (no CNI), a busybox pause
// image imported locally, containers with /out bind-mounted from the host.

// criPauseImage is the sandbox (pause) image: the test image with an entrypoint.
const criPauseImage = "docker.io/graceful/pause:latest"

// Grace periods of the handlers' options, all distinct, so that a stop's duration shows which
// configuration the shim applied.
const (
	criPathGrace     = 1500 * time.Millisecond // handler "graceful": options ConfigPath
	criInlineGrace   = 1200 * time.Millisecond // handler "graceful-inline": options table as ConfigBody
	criDefaultsGrace = 800 * time.Millisecond  // the defaults file (GRACEFUL_CONFIG_FILE), for "graceful-runcpath"
	criInitGrace     = 1100 * time.Millisecond // handler "graceful-init": init = true inline
)

// criHandler is a CRI runtime handler of the daemon and the grace period its configuration gives.
type criHandler struct {
	name  string
	grace time.Duration
	// shim is the binary that must serve the handler's pods (set by startCRI).
	shim string
	// init: the handler's options run every container under graceful-init.
	init bool
}

var criHandlers = []*criHandler{
	// runtime_type io.containerd.graceful.v2, options { ConfigPath = graceful.toml }.
	{name: "graceful", grace: criPathGrace},
	// runtime_type io.containerd.graceful.v2, the graceful keys inline in the options table: CRI
	// passes a table without ConfigPath whole, as runtimeoptions.v1.Options.ConfigBody.
	{name: "graceful-inline", grace: criInlineGrace},
	// runtime_type io.containerd.runc.v2 with runtime_path = the graceful shim and runc options:
	// the runc options pass through, graceful settings come from the defaults file and annotations.
	{name: "graceful-runcpath", grace: criDefaultsGrace},
	// runtime_type io.containerd.graceful.v2 with init = true inline: every container of the
	// handler's pods (a RuntimeClass graceful-init) runs under graceful-init.
	{name: "graceful-init", grace: criInitGrace, init: true},
}

var criSeq atomic.Int64

// criEnv is the private CRI daemon.
type criEnv struct {
	s            *stack.Stack
	dir          string // the CRI tests' own files: config, shim, outputs, logs
	rt           runtimeapi.RuntimeServiceClient
	images       runtimeapi.ImageServiceClient
	cgroupParent string
	imageNames   []string // imported into the CRI namespace
}

func TestCRI(t *testing.T) {
	start := time.Now()
	env := startCRIWith(t, criSetup{images: []criImage{{name: criStopQuitImage, stopSignal: "SIGQUIT"}}})
	t.Logf("CRI daemon ready after %v", time.Since(start).Round(time.Millisecond))
	for _, h := range criHandlers {
		t.Run(h.name, func(t *testing.T) {
			t.Run("stop", func(t *testing.T) { testCRIStop(t, env, h) })
			t.Run("pod-annotation-grace", func(t *testing.T) { testCRIPodAnnotationGrace(t, env, h) })
			t.Run("shared-pid", func(t *testing.T) { testCRISharedPID(t, env, h, runtimeapi.NamespaceMode_POD) })
			t.Run("host-pid", func(t *testing.T) { testCRISharedPID(t, env, h, runtimeapi.NamespaceMode_NODE) })
			t.Run("init-main-exit", func(t *testing.T) { testCRIInitMainExit(t, env, h) })
			t.Run("stop-signal", func(t *testing.T) { testCRIStopSignal(t, env, h) })
		})
	}
}

// criConfig is the daemon's CRI configuration (appended to the stack's config.toml, version 3);
// cniBinDir is where the CNI plugins are (a missing directory for host-network pods only).
func criConfig(dir, shim, runc, configPath, cniBinDir string, noHandlers bool) string {
	annotations := `
      pod_annotations = ['io.containerd.graceful.v2.*']
      container_annotations = ['io.containerd.graceful.v2.*', 'io.kubernetes.pod.terminationGracePeriod']`
	config := fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[1]q

[plugins.'io.containerd.cri.v1.runtime']
  # This host lacks CAP_SYS_RESOURCE: no oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces (critest's pods) are mounted below the daemon's state, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    # Host-network pods only unless a test writes a conflist (critest); keep the conf dir private.
    bin_dirs = [%[2]q]
    conf_dir = %[3]q
`, criPauseImage, cniBinDir, filepath.Join(dir, "cni", "net.d"))
	if noHandlers {
		return config
	}
	return config + fmt.Sprintf(`  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful]
      runtime_type = 'io.containerd.graceful.v2'%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful.options]
        ConfigPath = %[2]q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-inline]
      runtime_type = 'io.containerd.graceful.v2'%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-inline.options]
        grace_period = %[3]q
        BinaryName = %[4]q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-init]
      runtime_type = 'io.containerd.graceful.v2'%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-init.options]
        init = true
        grace_period = %[6]q
        BinaryName = %[4]q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-runcpath]
      runtime_type = 'io.containerd.runc.v2'
      runtime_path = %[5]q%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-runcpath.options]
        BinaryName = %[4]q
`, annotations, configPath, criInlineGrace.String(), runc, shim, criInitGrace.String())
}

// startCRI starts the private CRI daemon for host-network pods and imports the images into the
// CRI namespace; every trace of it is removed at cleanup.
func startCRI(t *testing.T) *criEnv {
	t.Helper()
	return startCRIWith(t, criSetup{})
}

// criSetup is what a CRI daemon needs beyond startCRI's: pod networking, more handlers, images.
type criSetup struct {
	// cniBinDir holds the CNI plugins (default: a missing directory, host-network pods only).
	cniBinDir string
	// cniConflist, when set, is written to the daemon's private CNI conf dir (dir/cni/net.d);
	// @DIR@ in it stands for the CRI daemon's directory.
	cniConflist string
	// extraConfig is appended to criConfig; @RUNC@, @SHIM@ and @CONFIG@ in it stand for the runc
	// binary, the graceful shim binary (for a runtime_path) and the graceful.toml options file.
	extraConfig string
	// images are imported into the CRI namespace besides the test and the pause image.
	images []criImage
	// noHandlers leaves the graceful handlers out of the config (the stock runc one remains).
	noHandlers bool
	// imports is the main config's imports list (drop-in files or globs).
	imports []string
}

// criImage is a busybox image for CRI.
type criImage struct {
	name            string
	entrypoint, cmd []string
	extra           []stack.ImageFile
	hardLinks       bool
	stopSignal      string
}

// startCRIWith starts a private CRI daemon as startCRI does, with setup's additions.
func startCRIWith(t *testing.T, setup criSetup) *criEnv {
	t.Helper()
	ctx := context.Background()
	dir, err := os.MkdirTemp("/run", "graceful-cri-")
	if err != nil {
		t.Fatal(err)
	}
	env := &criEnv{dir: dir, cgroupParent: "/" + filepath.Base(dir)}
	t.Cleanup(func() {
		if env.rt != nil {
			// Pods a failed test left behind (each test removes its own): their containers'
			// processes outlive a killed shim.
			ctx, cancel := criCtx()
			defer cancel()
			if pods, err := env.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
				for _, pod := range pods.GetItems() {
					env.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.Id})
					env.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.Id})
				}
			}
		}
		if env.s != nil {
			if t.Failed() {
				logPath := filepath.Join(os.TempDir(), "graceful-cri-containerd.log")
				if err := os.WriteFile(logPath, []byte(env.s.Log()), 0o644); err == nil {
					t.Logf("CRI containerd log saved to %s", logPath)
				}
			}
			if err := env.s.Close(); err != nil {
				t.Errorf("close the CRI stack: %v", err)
			}
		}
		removeCgroups(env.cgroupParent)
		os.RemoveAll(dir)
	})

	// The runtime_path form names the shim binary in the config, before the daemon exists.
	shim, err := stack.BuildShim(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	runc := filepath.Join(stack.StackDir(), "bin", "runc")
	if stack.Cgroup2() {
		// Unified mode without the cpu controller: runc must not get the sandbox's CPU shares.
		if runc, err = stack.BuildRuncNoCPU(filepath.Join(dir, "bin")); err != nil {
			t.Fatal(err)
		}
	}
	configPath := filepath.Join(dir, "graceful.toml")
	if err := os.WriteFile(configPath, []byte(fmt.Sprintf("grace_period = %q\nbinary_name = %q\n", criPathGrace, runc)), 0o644); err != nil {
		t.Fatal(err)
	}
	defaults := filepath.Join(dir, "defaults.toml")
	if err := os.WriteFile(defaults, []byte(fmt.Sprintf("grace_period = %q\n", criDefaultsGrace)), 0o644); err != nil {
		t.Fatal(err)
	}
	cniBinDir := setup.cniBinDir
	if cniBinDir == "" {
		cniBinDir = filepath.Join(dir, "cni", "bin")
	}
	if setup.cniConflist != "" {
		if err := os.MkdirAll(filepath.Join(dir, "cni", "net.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		conflist := strings.ReplaceAll(setup.cniConflist, "@DIR@", dir)
		if err := os.WriteFile(filepath.Join(dir, "cni", "net.d", "10-graceful.conflist"), []byte(conflist), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	extra := strings.NewReplacer("@RUNC@", runc, "@SHIM@", shim, "@CONFIG@", configPath).Replace(setup.extraConfig)
	config := criConfig(dir, shim, runc, configPath, cniBinDir, setup.noHandlers) + extra
	t.Logf("CRI config appended to the stack's config.toml:%s", config)

	env.s, err = stack.Start(ctx, stack.Options{Env: []string{"GRACEFUL_CONFIG_FILE=" + defaults}, ExtraConfig: config, Imports: setup.imports})
	if err != nil {
		t.Fatalf("start the CRI stack: %v", err)
	}
	for _, h := range criHandlers {
		h.shim = filepath.Join(env.s.Dir, "bin", "containerd-shim-graceful-v2") // found on PATH
		if h.name == "graceful-runcpath" {
			h.shim = shim
		}
	}

	env.imageNames = []string{stack.ImageName, criPauseImage}
	for _, img := range append([]criImage{{name: stack.ImageName}, {name: criPauseImage, entrypoint: []string{"/bin/sleep", "infinity"}}}, setup.images...) {
		if img.name != stack.ImageName && img.name != criPauseImage {
			env.imageNames = append(env.imageNames, img.name)
		}
		var archive bytes.Buffer
		if err := stack.BuildImage(&archive, "/bin/busybox", stack.ImageOptions{Name: img.name, Entrypoint: img.entrypoint, Cmd: img.cmd, Extra: img.extra, HardLinks: img.hardLinks, StopSignal: img.stopSignal}); err != nil {
			t.Fatalf("build image %s: %v", img.name, err)
		}
		if _, err := env.s.ImportInto(ctx, stack.CRINamespace, &archive); err != nil {
			t.Fatal(err)
		}
	}

	conn, err := grpc.NewClient("unix://"+env.s.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	env.rt = runtimeapi.NewRuntimeServiceClient(conn)
	env.images = runtimeapi.NewImageServiceClient(conn)

	// The CRI plugin initializes in the background, and learns of imported images from events.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := criReady(ctx, env)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRI not ready: %v\n%s", err, env.s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return env
}

// criReady checks that the CRI runtime is ready and sees the imported images.
func criReady(ctx context.Context, env *criEnv) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := env.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return err
	}
	for _, c := range st.GetStatus().GetConditions() {
		if c.Type == runtimeapi.RuntimeReady && !c.Status {
			return fmt.Errorf("runtime not ready: %s %s", c.Reason, c.Message)
		}
	}
	for _, name := range env.imageNames {
		resp, err := env.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
		if err != nil {
			return err
		}
		if resp.GetImage() == nil {
			return fmt.Errorf("CRI does not see image %s yet", name)
		}
	}
	return nil
}

// removeCgroups removes the pods' cgroup parent in every hierarchy (runc removes the containers').
func removeCgroups(parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	if d := filepath.Join("/sys/fs/cgroup", parent); isDir(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		syscall.Rmdir(d)
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func criCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

// criPod is a running pod sandbox.
type criPod struct {
	env        *criEnv
	handler    *criHandler
	id         string
	config     *runtimeapi.PodSandboxConfig
	pidMode    runtimeapi.NamespaceMode
	containers map[string]*criContainer // by name
	removed    bool
}

// criContainer is a started container of a pod.
type criContainer struct {
	id, name string
	out      string // host side of /out
	log      string // its CRI log file
}

// runPod runs a host-network pod under the handler, with the given PID namespace mode and pod
// annotations; it is stopped and removed at cleanup.
func runPod(t *testing.T, env *criEnv, h *criHandler, pidMode runtimeapi.NamespaceMode, annotations map[string]string) *criPod {
	t.Helper()
	n := criSeq.Add(1)
	name := fmt.Sprintf("%s-%d", strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())), n)
	if len(name) > 60 {
		name = strings.TrimLeft(name[len(name)-60:], "-")
	}
	logDir := filepath.Join(env.dir, "logs", name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &criPod{env: env, handler: h, pidMode: pidMode, containers: map[string]*criContainer{}}
	p.config = &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: fmt.Sprintf("uid-%d-%d", os.Getpid(), n), Namespace: "graceful-cri"},
		LogDirectory: logDir,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: env.cgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: pidMode, Ipc: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	ctx, cancel := criCtx()
	defer cancel()
	resp, err := env.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.config, RuntimeHandler: h.name})
	if err != nil {
		t.Fatalf("RunPodSandbox (handler %s): %v\n%s", h.name, err, env.logLines("level=error", "level=warn"))
	}
	p.id = resp.PodSandboxId
	t.Cleanup(func() {
		if !p.removed {
			ctx, cancel := criCtx()
			defer cancel()
			if _, err := env.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
				t.Errorf("cleanup: StopPodSandbox: %v", err)
			}
			if _, err := env.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
				t.Errorf("cleanup: RemovePodSandbox: %v", err)
			}
		}
		if t.Failed() {
			for _, c := range p.containers {
				data, _ := os.ReadFile(c.log)
				t.Logf("container %s (%s) log:\n%s", c.name, c.id, data)
			}
			t.Logf("containerd log lines of pod %s:\n%s", p.id, env.logLines(p.ids()...))
		}
	})
	return p
}

// tag is the tag of the container's processes: unique to this test process, pod and container.
func (p *criPod) tag(container string) string {
	return fmt.Sprintf("gcri-%d-%s-%s", os.Getpid(), p.config.Metadata.Name, container)
}

// processesLeft lists the host processes whose command line carries the tag of one of the
// containers (by default, of every container of the pod).
func (p *criPod) processesLeft(containers ...string) []string {
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
			if bytes.Contains(cmdline, []byte(p.tag(name)+"\n")) || bytes.Contains(cmdline, []byte(p.tag(name)+";")) {
				left = append(left, fmt.Sprintf("%s: %q", e.Name(), bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
				break
			}
		}
	}
	return left
}

// noProcessLeft checks that no process of the stopped container is left (the TERM-ignoring
// child was killed).
func (p *criPod) noProcessLeft(t *testing.T, c *criContainer) {
	t.Helper()
	for _, proc := range p.processesLeft(c.name) {
		t.Errorf("process of stopped container %s left: %s", c.name, proc)
	}
}

func (p *criPod) ids() []string {
	ids := []string{p.id}
	for _, c := range p.containers {
		ids = append(ids, c.id)
	}
	return ids
}

// start creates and starts a container running script (sh -c) with /out bind-mounted from a new
// host directory, and the annotations.
func (p *criPod) start(t *testing.T, name, script string, annotations map[string]string) *criContainer {
	t.Helper()
	return p.startWith(t, name, script, annotations, nil)
}

// startWith is start with the container config changed by edit, when not nil.
func (p *criPod) startWith(t *testing.T, name, script string, annotations map[string]string, edit func(*runtimeapi.ContainerConfig)) *criContainer {
	t.Helper()
	out := filepath.Join(p.env.dir, "out", p.config.Metadata.Name, name)
	if err := os.MkdirAll(out, 0o777); err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"io.kubernetes.pod.terminationGracePeriod": "30"} // as kubelet sets it
	for k, v := range annotations {
		all[k] = v
	}
	config := &runtimeapi.ContainerConfig{
		Metadata:    &runtimeapi.ContainerMetadata{Name: name},
		Image:       &runtimeapi.ImageSpec{Image: stack.ImageName},
		Command:     []string{"sh", "-c", strings.ReplaceAll(script, "@TAG@", p.tag(name))},
		LogPath:     name + ".log",
		Annotations: all,
		Mounts:      []*runtimeapi.Mount{{ContainerPath: "/out", HostPath: out}},
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: p.pidMode, Ipc: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	if edit != nil {
		edit(config)
	}
	ctx, cancel := criCtx()
	defer cancel()
	resp, err := p.env.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.id, Config: config, SandboxConfig: p.config})
	if err != nil {
		t.Fatalf("CreateContainer %s (handler %s): %v\n%s", name, p.handler.name, err, p.env.logLines(p.id))
	}
	c := &criContainer{id: resp.ContainerId, name: name, out: out, log: filepath.Join(p.config.LogDirectory, config.LogPath)}
	p.containers[name] = c
	if _, err := p.env.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.id}); err != nil {
		t.Fatalf("StartContainer %s (handler %s): %v", name, p.handler.name, err)
	}
	if stack.Cgroup2Required() {
		p.checkUnified(t, c)
	}
	return c
}

// checkUnified fails the test unless the container's init runs in cgroup v2 unified mode (make
// test-cgroup2).
func (p *criPod) checkUnified(t *testing.T, c *criContainer) {
	t.Helper()
	ctx, cancel := criCtx()
	defer cancel()
	k8s := namespaces.WithNamespace(ctx, stack.CRINamespace)
	container, err := p.env.s.Client.LoadContainer(k8s, c.id)
	if err != nil {
		t.Fatalf("load container %s: %v", c.name, err)
	}
	task, err := container.Task(k8s, nil)
	if err != nil {
		t.Fatalf("task of container %s: %v", c.name, err)
	}
	if err := stack.CheckUnified(int(task.Pid()), c.id); err != nil {
		t.Fatal(err)
	}
}

// waitFile waits until the container wrote /out/name.
func (c *criContainer) waitFile(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !fileExists(filepath.Join(c.out, name)) {
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(c.log)
			t.Fatalf("container %s did not write /out/%s in 20s; its log:\n%s", c.name, name, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// marker returns the content of /out/name, or "" when the container did not write it.
func (c *criContainer) marker(name string) string {
	data, err := os.ReadFile(filepath.Join(c.out, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// stop calls StopContainer with the timeout (in seconds) and returns how long it took.
func (p *criPod) stop(t *testing.T, c *criContainer, timeout int64) time.Duration {
	t.Helper()
	ctx, cancel := criCtx()
	defer cancel()
	start := time.Now()
	if _, err := p.env.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c.id, Timeout: timeout}); err != nil {
		t.Fatalf("StopContainer %s: %v", c.name, err)
	}
	return time.Since(start)
}

// status returns the container's CRI status.
func (p *criPod) status(t *testing.T, c *criContainer) *runtimeapi.ContainerStatus {
	t.Helper()
	ctx, cancel := criCtx()
	defer cancel()
	resp, err := p.env.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.id})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", c.name, err)
	}
	return resp.GetStatus()
}

// exited checks that the container exited with the exit code.
func (p *criPod) exited(t *testing.T, c *criContainer, code int32) {
	t.Helper()
	st := p.status(t, c)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != code {
		t.Errorf("container %s: state %v exit code %d (%s), want exited with %d", c.name, st.GetState(), st.GetExitCode(), st.GetReason(), code)
	}
}

// drainLogged checks that the graceful shim logged a graceful stop for the container (the
// handler's pods really run the graceful shim) and returns that log line ("" when none came).
func (p *criPod) drainLogged(t *testing.T, c *criContainer) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(p.env.s.Log(), "\n") {
			if strings.Contains(line, "graceful stop") && strings.Contains(line, c.id) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no \"graceful stop\" log line for container %s (%s) of handler %s", c.name, c.id, p.handler.name)
			return ""
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drainGrace returns the grace period of container c's drain, from its stop report in the
// daemon's log (0 when there is none).
func (p *criPod) drainGrace(t *testing.T, c *criContainer) time.Duration {
	t.Helper()
	if m := graceNs.FindStringSubmatch(p.drainLogged(t, c)); m != nil {
		ns, _ := strconv.ParseInt(m[1], 10, 64)
		return time.Duration(ns)
	}
	return 0
}

// graceNs finds a drain's grace_ns in a stop report quoted in a log line.
var graceNs = regexp.MustCompile(`grace_ns\\*":(\d+)`)

// checkShim checks that exactly one shim serves the pod, and that it is the handler's binary.
func (p *criPod) checkShim(t *testing.T) {
	t.Helper()
	pids := p.env.s.ShimPids(p.id)
	if len(pids) != 1 {
		t.Fatalf("pod %s: want 1 shim process, found %v", p.id, pids)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	if exe != p.handler.shim {
		t.Fatalf("pod %s (handler %s) is served by %s, want %s", p.id, p.handler.name, exe, p.handler.shim)
	}
}

// teardown stops and removes the pod as the kubelet does, and checks that nothing is left of it:
// no shim, no container nor sandbox in containerd's k8s.io namespace, no pod in CRI.
func (p *criPod) teardown(t *testing.T) {
	t.Helper()
	ctx, cancel := criCtx()
	defer cancel()
	start := time.Now()
	if _, err := p.env.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	st, err := p.env.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("after StopPodSandbox the pod is %v", st.GetStatus().GetState())
	}
	stopped := time.Since(start)
	if _, err := p.env.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	p.removed = true
	t.Logf("StopPodSandbox took %v, RemovePodSandbox %v", stopped.Round(time.Millisecond), (time.Since(start) - stopped).Round(time.Millisecond))

	deadline := time.Now().Add(10 * time.Second)
	for len(p.env.s.ShimPids(p.id)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("shim of pod %s still running after RemovePodSandbox: %v", p.id, p.env.s.ShimPids(p.id))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, proc := range p.processesLeft() {
		t.Errorf("process of pod %s left after RemovePodSandbox: %s", p.id, proc)
	}
	k8s := namespaces.WithNamespace(ctx, stack.CRINamespace)
	cs, err := p.env.s.Client.Containers(k8s)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		t.Errorf("containerd container %s left in namespace %s", c.ID(), stack.CRINamespace)
	}
	sbs, err := p.env.s.Client.SandboxStore().List(k8s)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs {
		t.Errorf("containerd sandbox %s left in namespace %s", sb.ID, stack.CRINamespace)
	}
	pods, err := p.env.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range pods.GetItems() {
		t.Errorf("CRI pod %s (%s) left", pod.Id, pod.GetMetadata().GetName())
	}
}

// logLines returns the daemon's log lines that contain any of subs.
func (env *criEnv) logLines(subs ...string) string {
	var b strings.Builder
	for _, line := range strings.Split(env.s.Log(), "\n") {
		for _, s := range subs {
			if s != "" && strings.Contains(line, s) {
				b.WriteString(line + "\n")
				break
			}
		}
	}
	return b.String()
}

// criLoop keeps a shell busy in a way that lets its traps run promptly.
const criLoop = `while :; do sleep 0.05; done`

// The scripts' processes carry @TAG@ (a tag unique to the container, see criPod.start) in their
// command lines, so that the test can tell that none of them is left after the pod's removal.

// criTrappingChild: init exits on TERM; its child needs 0.3s to clean up on TERM, then writes
// /out/child. The child writes /out/child-ready once its trap is set (init's is set before).
const criTrappingChild = `: @TAG@
trap "exit 0" TERM
sh -c ': @TAG@; trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; touch /out/child-ready; ` + criLoop + `' &
echo started
` + criLoop

// criIgnoringChild: init exits on TERM; its child ignores TERM.
const criIgnoringChild = `: @TAG@
trap "exit 0" TERM
sh -c ': @TAG@; trap "" TERM; touch /out/child-ready; ` + criLoop + `' &
echo started
` + criLoop

// criSentinel records any TERM its init or its child receives. A WINCH makes each write
// /out/<init|child>-flush: the shell runs pending traps in signal order, so once a WINCH sent
// after a stray TERM is recorded, that TERM is recorded too.
const criSentinel = `: @TAG@
trap "echo got > /out/init-term" TERM
trap "echo flushed > /out/init-flush" WINCH
sh -c ': @TAG@; trap "echo got > /out/child-term" TERM; trap "echo flushed > /out/child-flush" WINCH; touch /out/child-ready; ` + criLoop + `' &
echo started
` + criLoop

// StopContainer on the handler's pods: a child's TERM handler runs; a TERM-ignoring child is
// SIGKILLed at the grace period of the handler's configuration; when the grace period is longer
// than StopContainer's timeout, containerd's SIGKILL at the timeout ends the stop (and the drain).
// Then the pod is stopped and removed without a trace.
func testCRIStop(t *testing.T, env *criEnv, h *criHandler) {
	p := runPod(t, env, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	p.checkShim(t)

	t.Run("child-handler-runs", func(t *testing.T) {
		c := p.start(t, "trapping", criTrappingChild, nil)
		c.waitFile(t, "child-ready")
		// The check for leftover processes must see the running ones: init and child.
		if procs := p.processesLeft(c.name); len(procs) < 2 {
			t.Fatalf("found %d tagged processes of the running container, want init and its child: %v", len(procs), procs)
		}
		took := p.stop(t, c, 10)
		t.Logf("StopContainer(10) took %v", took.Round(time.Millisecond))
		if got := c.marker("child"); got != "clean" {
			t.Errorf("the child's TERM handler did not complete (marker %q)", got)
		}
		if took < 300*time.Millisecond || took > 3*time.Second {
			t.Errorf("StopContainer took %v, want about the child's 0.3s cleanup", took)
		}
		p.exited(t, c, 0)
		p.drainLogged(t, c)
		p.noProcessLeft(t, c)
	})

	t.Run("config-grace", func(t *testing.T) {
		c := p.start(t, "ignoring", criIgnoringChild, nil)
		c.waitFile(t, "child-ready")
		took := p.stop(t, c, 10)
		t.Logf("grace %v from the handler's configuration: StopContainer(10) took %v", h.grace, took.Round(time.Millisecond))
		// The grace applied is read from the stop's report; the time bound (3 s of margin on a
		// loaded machine) only catches a stop that did not wait for it, or waited for another.
		if took < h.grace || took >= h.grace+3*time.Second {
			t.Errorf("StopContainer took %v, want between %v and %v (the handler's grace period)", took, h.grace, h.grace+3*time.Second)
		}
		if got := p.drainGrace(t, c); got != h.grace {
			t.Errorf("the stop's drain had a grace period of %v, want the handler's %v", got, h.grace)
		}
		p.exited(t, c, 0)
		p.noProcessLeft(t, c)
	})

	t.Run("timeout-escalation", func(t *testing.T) {
		// A 30s grace period (container annotation) outlasts StopContainer's 2s timeout.
		c := p.start(t, "escalated", criIgnoringChild, map[string]string{"io.containerd.graceful.v2.grace-period": "30s"})
		c.waitFile(t, "child-ready")
		const timeout = 2 * time.Second
		took := p.stop(t, c, int64(timeout/time.Second))
		t.Logf("grace 30s: StopContainer(2) took %v", took.Round(time.Millisecond))
		if took < timeout || took >= timeout+3*time.Second {
			t.Errorf("StopContainer(2) took %v, want between %v (the drain holds init's TERM) and %v (containerd's SIGKILL, far below the 30 s grace)", took, timeout, timeout+3*time.Second)
		}
		// Exit code: 137 when containerd's SIGKILL ends init, or init's own 0 when init had
		// already handled its TERM (and the shim held its exit while the others drained).
		if st := p.status(t, c); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || (st.GetExitCode() != 137 && st.GetExitCode() != 0) {
			t.Errorf("container %s: state %v exit code %d (%s), want exited with 137 or 0", c.name, st.GetState(), st.GetExitCode(), st.GetReason())
		}
		p.drainLogged(t, c)
		p.noProcessLeft(t, c)
	})

	t.Run("termination-grace-period", func(t *testing.T) {
		// kubelet's container annotation io.kubernetes.pod.terminationGracePeriod (allowlisted by
		// container_annotations) caps the drain so that it ends before kubelet's SIGKILL at 3s,
		// although the grace period is 30s. StopContainer's timeout is 10s here (kubelet would
		// pass 3), so that containerd's own SIGKILL cannot be what ends the stop.
		c := p.start(t, "kubelet-grace", criIgnoringChild, map[string]string{
			"io.containerd.graceful.v2.grace-period":   "30s",
			"io.kubernetes.pod.terminationGracePeriod": "3",
		})
		c.waitFile(t, "child-ready")
		took := p.stop(t, c, 10)
		t.Logf("grace 30s, terminationGracePeriod 3: StopContainer(10) took %v", took.Round(time.Millisecond))
		if took < time.Second || took >= 3*time.Second {
			t.Errorf("StopContainer took %v, want the drain to end before kubelet's SIGKILL at 3s (and not at once)", took)
		}
		p.exited(t, c, 0)
		p.drainLogged(t, c)
		p.noProcessLeft(t, c)
	})

	t.Run("sandbox-passthrough", func(t *testing.T) { p.checkSandboxPassthrough(t) })

	p.teardown(t)
}

// checkSandboxPassthrough sends SIGTERM to the pod's sandbox (pause) container, which the shim
// forwards untouched: the pause process, PID 1 of its namespace without a TERM handler, drops it
// and the pod stays ready. (A graceful stop would have SIGKILLed it instead.)
func (p *criPod) checkSandboxPassthrough(t *testing.T) {
	t.Helper()
	ctx, cancel := criCtx()
	defer cancel()
	k8s := namespaces.WithNamespace(ctx, stack.CRINamespace)
	sandbox, err := p.env.s.Client.LoadContainer(k8s, p.id)
	if err != nil {
		t.Fatalf("load the sandbox container: %v", err)
	}
	task, err := sandbox.Task(k8s, nil)
	if err != nil {
		t.Fatalf("sandbox task: %v", err)
	}
	pause, err := process.Open(int(task.Pid()))
	if err != nil {
		t.Fatalf("pidfd of the pause process %d: %v", task.Pid(), err)
	}
	defer pause.Close()
	if err := task.Kill(k8s, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to the sandbox: %v", err)
	}
	// The kernel drops the forwarded TERM at once, and nothing shows that it did: wait instead for
	// what a graceful stop would bring within milliseconds (its drain has nothing to wait for), the
	// pause process's SIGKILL and exit, on its pidfd, for far longer than that would take.
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(pause.Fd()), Events: unix.POLLIN}}, 2000); n != 0 || err != nil {
		t.Errorf("the pause process exited after a SIGTERM to the sandbox (poll %d, %v): the signal was not forwarded untouched", n, err)
	}
	st, err := task.Status(k8s)
	if err != nil || st.Status != "running" {
		t.Errorf("after SIGTERM the sandbox task is %q (%v), want running", st.Status, err)
	}
	ps, err := p.env.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil || ps.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("after SIGTERM to the sandbox the pod is %v (%v), want ready", ps.GetStatus().GetState(), err)
	}
	for _, line := range strings.Split(p.env.s.Log(), "\n") {
		if strings.Contains(line, "graceful stop") && strings.Contains(line, "id="+p.id) {
			t.Errorf("the shim ran a graceful stop for the sandbox: %s", line)
		}
	}
}

// The pod annotation io.containerd.graceful.v2.grace-period reaches the shim through CRI's
// pod_annotations and beats the handler's configuration: a TERM-ignoring child is SIGKILLed after
// 1s although StopContainer allows 10s.
// criStopQuitImage is the test image with StopSignal SIGQUIT in its config, as nginx's.
const criStopQuitImage = "docker.io/graceful/busybox-stopquit:latest"

// A container's own stop signal drains with no annotation: the pod's lifecycle.stopSignal
// (ContainerConfig.stop_signal, SIGINT here) and the image's StopSignal (SIGQUIT), which
// containerd's StopContainer sends instead of SIGTERM, and which the shim reads from CRI's
// container record. Init traps the signal and exits 0; the child's TERM handler runs.
func testCRIStopSignal(t *testing.T, env *criEnv, h *criHandler) {
	p := runPod(t, env, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	for _, tc := range []struct {
		name, signal string
		edit         func(*runtimeapi.ContainerConfig)
	}{
		{"lifecycle-stop-signal", "INT", func(c *runtimeapi.ContainerConfig) { c.StopSignal = runtimeapi.Signal_SIGNAL_SIGINT }},
		{"image-stop-signal", "QUIT", func(c *runtimeapi.ContainerConfig) { c.Image = &runtimeapi.ImageSpec{Image: criStopQuitImage} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := p.startWith(t, tc.name, `: @TAG@
trap "exit 0" `+tc.signal+`
sh -c ': @TAG@; trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; touch /out/child-ready; `+criLoop+`' &
echo started
`+criLoop, nil, tc.edit)
			c.waitFile(t, "child-ready")
			took := p.stop(t, c, 10)
			t.Logf("stop signal SIG%s: StopContainer(10) took %v", tc.signal, took.Round(time.Millisecond))
			if got := c.marker("child"); got != "clean" {
				t.Errorf("SIG%s did not drain: the child's TERM handler did not complete (marker %q)", tc.signal, got)
			}
			p.exited(t, c, 0)
			p.drainLogged(t, c)
			p.noProcessLeft(t, c)
		})
	}
	p.teardown(t)
}

// Under graceful-init (the handler's init = true, or the container annotation for the other
// handlers), the main process exits 3 by itself while a helper traps TERM and needs 0.3s: the
// helper's handler runs, the container's exit code is the main process's 3, and the drain is
// logged as a stop.
func testCRIInitMainExit(t *testing.T, env *criEnv, h *criHandler) {
	p := runPod(t, env, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	var annotations map[string]string
	if !h.init {
		annotations = map[string]string{"io.containerd.graceful.v2.init": "true"}
	}
	c := p.start(t, "main-exit", `: @TAG@
sh -c ': @TAG@; trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; touch /out/child-ready; `+criLoop+`' &
while [ ! -e /out/go ]; do sleep 0.05; done
exit 3`, annotations)
	c.waitFile(t, "child-ready")
	if err := os.WriteFile(filepath.Join(c.out, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for p.status(t, c).GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		if time.Now().After(deadline) {
			t.Fatalf("the container did not exit after its main process did")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.exited(t, c, 3)
	if got := c.marker("child"); got != "clean" {
		t.Errorf("the helper's TERM handler did not complete (marker %q): zapped", got)
	}
	p.drainLogged(t, c)
	p.noProcessLeft(t, c)
	p.teardown(t)
}

func testCRIPodAnnotationGrace(t *testing.T, env *criEnv, h *criHandler) {
	p := runPod(t, env, h, runtimeapi.NamespaceMode_CONTAINER, map[string]string{"io.containerd.graceful.v2.grace-period": "1s"})
	c := p.start(t, "ignoring", criIgnoringChild, nil)
	c.waitFile(t, "child-ready")
	took := p.stop(t, c, 10)
	t.Logf("pod annotation grace 1s: StopContainer(10) took %v", took.Round(time.Millisecond))
	if took < time.Second || took > 4*time.Second {
		t.Errorf("StopContainer took %v, want between 1s and 4s (the pod annotation's grace period, not the 10 s default)", took)
	}
	p.exited(t, c, 0)
	p.drainLogged(t, c)
	p.noProcessLeft(t, c)
	p.teardown(t)
}

// Containers that share a PID namespace (pidMode POD: shareProcessNamespace; NODE: hostPID): the
// stop of container A drains A's processes only; container B in the same namespace and, with
// hostPID, a host process do not get TERM (each records any TERM, and a WINCH sent after the stop
// proves by its record that a stray TERM would be recorded by then), and each process of B and the
// host process is still alive at the end (a pidfd on each: a SIGKILL cannot be trapped).
func testCRISharedPID(t *testing.T, env *criEnv, h *criHandler, pidMode runtimeapi.NamespaceMode) {
	hostDir := t.TempDir()
	host := exec.Command("/bin/sh", "-c", `trap "echo got > `+hostDir+`/term" TERM; trap "echo flushed > `+hostDir+`/flush" WINCH; touch `+hostDir+`/ready; `+criLoop)
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	hostDone := make(chan struct{})
	go func() { host.Wait(); close(hostDone) }()
	t.Cleanup(func() { host.Process.Kill(); <-hostDone })

	p := runPod(t, env, h, pidMode, nil)
	p.checkShim(t)
	a := p.start(t, "a", criTrappingChild, nil)
	b := p.start(t, "b", criSentinel, nil)
	a.waitFile(t, "child-ready")
	b.waitFile(t, "child-ready")
	deadline := time.Now().Add(10 * time.Second)
	for !fileExists(filepath.Join(hostDir, "ready")) {
		if time.Now().After(deadline) {
			t.Fatal("host sentinel not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	bInit, bChild := p.sentinelPids(t, b)
	sentinels := []struct {
		what  string
		h     *process.Handle
		flush string // the file its WINCH trap writes
	}{
		{"b's init", openPid(t, "b's init", bInit), filepath.Join(b.out, "init-flush")},
		{"b's child", openPid(t, "b's child", bChild), filepath.Join(b.out, "child-flush")},
		{"the host sentinel", openPid(t, "the host sentinel", host.Process.Pid), filepath.Join(hostDir, "flush")},
	}

	took := p.stop(t, a, 10)
	t.Logf("%v PID namespace: StopContainer(a, 10) took %v", pidMode, took.Round(time.Millisecond))
	if got := a.marker("child"); got != "clean" {
		t.Errorf("a's child TERM handler did not complete (marker %q)", got)
	}
	if took > 3*time.Second {
		t.Errorf("StopContainer took %v, want about the child's 0.3s cleanup", took)
	}
	p.exited(t, a, 0)
	p.drainLogged(t, a)
	p.noProcessLeft(t, a)

	// a's drain is over (its report is logged): any stray signal has been sent. A SIGKILL cannot
	// be trapped, but shows on the pidfd; a TERM shows once a WINCH sent after it is recorded.
	for _, s := range sentinels {
		if s.h.Exited() {
			t.Errorf("%s died (SIGKILLed?) when a was stopped", s.what)
			continue
		}
		if err := s.h.Signal(syscall.SIGWINCH); err != nil {
			t.Errorf("WINCH to %s: %v", s.what, err)
			continue
		}
		deadline := time.Now().Add(10 * time.Second)
		for !fileExists(s.flush) {
			if s.h.Exited() || time.Now().After(deadline) {
				t.Errorf("%s did not record its WINCH (exited: %v)", s.what, s.h.Exited())
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, m := range []string{"init-term", "child-term"} {
		if got := b.marker(m); got != "" {
			t.Errorf("container b got TERM (/out/%s) when a was stopped", m)
		}
	}
	if fileExists(filepath.Join(hostDir, "term")) {
		t.Errorf("the host sentinel got TERM when a was stopped")
	}
	if st := p.status(t, b); st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container b is %v after a's stop, want running", st.GetState())
	}
	p.teardown(t)
}

// sentinelPids returns the host PIDs of the init and the child of container c (criSentinel),
// told apart from their loops' short-lived forks (which carry the same command line until they
// exec sleep) by their parents: init's parent carries no tag, the child's parent is init.
func (p *criPod) sentinelPids(t *testing.T, c *criContainer) (init, child int) {
	t.Helper()
	tag := []byte(p.tag(c.name))
	cmdline := func(pid int) []byte {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return data
	}
	entries, _ := os.ReadDir("/proc")
	var inits, children []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := process.ReadStatus(pid)
		if err != nil {
			continue
		}
		// Under graceful-init the script's shell is init's child (and init's command line
		// carries the script too): that shell is the sentinel's "init".
		underInit := false
		if parent, err := process.ReadStatus(st.PPid); err == nil && parent.Name == "graceful-init" {
			underInit = true
		}
		switch cmd := cmdline(pid); {
		case st.Name == "graceful-init":
		case bytes.Contains(cmd, append(tag, '\n')) && (underInit || !bytes.Contains(cmdline(st.PPid), tag)):
			inits = append(inits, pid)
		case bytes.Contains(cmd, append(tag, ';')) && bytes.Contains(cmd, []byte("child-term")):
			children = append(children, pid)
		}
	}
	if len(inits) != 1 {
		t.Fatalf("container %s: init candidates %v, want one", c.name, inits)
	}
	for _, pid := range children {
		if st, err := process.ReadStatus(pid); err == nil && st.PPid == inits[0] {
			return inits[0], pid
		}
	}
	t.Fatalf("container %s: no child of init %d among %v", c.name, inits[0], children)
	return 0, 0
}
