// Package cri runs a private containerd with its CRI plugin configured for the graceful shim in
// both forms a Kubernetes node can use, and drives it as the kubelet does, through the CRI gRPC
// API: host-network pods (no CNI) unless a test configures a network, a busybox pause image
// imported locally, containers with /out bind-mounted from the host.
package cri

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Env is a private CRI daemon.
type Env struct {
	Stack *stack.Stack
	// Dir holds the CRI tests' own files: config, shim, outputs, logs.
	Dir      string
	Runtime  runtimeapi.RuntimeServiceClient
	Images   runtimeapi.ImageServiceClient
	Handlers []*Handler // the graceful handlers, with the shim that serves each
	// CgroupParent is the pods' cgroup parent, removed at cleanup.
	CgroupParent string
	imageNames   []string // imported into the CRI namespace
}

// Setup is what a CRI daemon needs beyond the default, host-network pods under the graceful
// handlers: pod networking, more handlers, images.
type Setup struct {
	// CNIBinDir holds the CNI plugins (default: a missing directory, host-network pods only).
	CNIBinDir string
	// CNIConflist, when set, is written to the daemon's private CNI conf dir (dir/cni/net.d);
	// @DIR@ in it stands for the CRI daemon's directory.
	CNIConflist string
	// ExtraConfig is appended to the CRI configuration; @RUNC@, @SHIM@ and @CONFIG@ in it stand
	// for the runc binary, the graceful shim binary (for a runtime_path) and the graceful.toml
	// options file.
	ExtraConfig string
	// Images are imported into the CRI namespace besides the test and the pause image.
	Images []stack.ImageOptions
	// NoHandlers leaves the graceful handlers out of the config (the stock runc one remains).
	NoHandlers bool
	// Imports is the main config's imports list (drop-in files or globs).
	Imports []string
}

// podSeq numbers the pods of the test process.
var podSeq atomic.Int64

// Context is a context for one CRI call, or a few.
func Context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

// Start starts a private CRI daemon with setup and imports the images into the CRI namespace;
// every trace of it is removed at cleanup.
func Start(tb testing.TB, setup Setup) *Env {
	tb.Helper()
	ctx := context.Background()
	dir, err := os.MkdirTemp("/run", "graceful-cri-")
	if err != nil {
		tb.Fatal(err)
	}
	env := &Env{Dir: dir, CgroupParent: "/" + filepath.Base(dir), Handlers: handlers()}
	tb.Cleanup(func() { env.close(tb) })

	// The runtime_path form names the shim binary in the config, before the daemon exists.
	shim, err := stack.BuildShim(filepath.Join(dir, "bin"))
	if err != nil {
		tb.Fatal(err)
	}
	runc := filepath.Join(stack.StackDir(), "bin", "runc")
	if stack.Cgroup2() {
		// Unified mode without the cpu controller: runc must not get the sandbox's CPU shares.
		if runc, err = stack.BuildRuncNoCPU(filepath.Join(dir, "bin")); err != nil {
			tb.Fatal(err)
		}
	}
	configPath := filepath.Join(dir, "graceful.toml")
	if err := os.WriteFile(configPath, []byte(fmt.Sprintf("grace_period = %q\nbinary_name = %q\n", pathGrace, runc)), 0o644); err != nil {
		tb.Fatal(err)
	}
	defaults := filepath.Join(dir, "defaults.toml")
	if err := os.WriteFile(defaults, []byte(fmt.Sprintf("grace_period = %q\n", defaultsGrace)), 0o644); err != nil {
		tb.Fatal(err)
	}
	cniBinDir := setup.CNIBinDir
	if cniBinDir == "" {
		cniBinDir = filepath.Join(dir, "cni", "bin")
	}
	if setup.CNIConflist != "" {
		if err := os.MkdirAll(filepath.Join(dir, "cni", "net.d"), 0o755); err != nil {
			tb.Fatal(err)
		}
		conflist := strings.ReplaceAll(setup.CNIConflist, "@DIR@", dir)
		if err := os.WriteFile(filepath.Join(dir, "cni", "net.d", "10-graceful.conflist"), []byte(conflist), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	extra := strings.NewReplacer("@RUNC@", runc, "@SHIM@", shim, "@CONFIG@", configPath).Replace(setup.ExtraConfig)
	config := daemonConfig(dir, shim, runc, configPath, cniBinDir, setup.NoHandlers) + extra
	tb.Logf("CRI config appended to the stack's config.toml:%s", config)

	env.Stack, err = stack.Start(ctx, stack.Options{Env: []string{"GRACEFUL_CONFIG_FILE=" + defaults}, ExtraConfig: config, Imports: setup.Imports})
	if err != nil {
		tb.Fatalf("start the CRI stack: %v", err)
	}
	for _, h := range env.Handlers {
		h.Shim = filepath.Join(env.Stack.Dir, "bin", "containerd-shim-graceful-v2") // found on PATH
		if h.Name == "graceful-runcpath" {
			h.Shim = shim
		}
	}
	env.importImages(ctx, tb, setup.Images)

	conn, err := grpc.NewClient("unix://"+env.Stack.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	env.Runtime = runtimeapi.NewRuntimeServiceClient(conn)
	env.Images = runtimeapi.NewImageServiceClient(conn)
	if err := env.waitReady(ctx); err != nil {
		tb.Fatalf("CRI not ready: %v\n%s", err, env.Stack.Log())
	}
	return env
}

// importImages imports the test image, the pause image and images into the CRI namespace.
func (env *Env) importImages(ctx context.Context, tb testing.TB, images []stack.ImageOptions) {
	tb.Helper()
	env.imageNames = []string{stack.ImageName, PauseImage}
	for _, img := range append([]stack.ImageOptions{{Name: stack.ImageName}, {Name: PauseImage, Entrypoint: []string{"/bin/sleep", "infinity"}}}, images...) {
		if img.Name != stack.ImageName && img.Name != PauseImage {
			env.imageNames = append(env.imageNames, img.Name)
		}
		var archive bytes.Buffer
		if err := stack.BuildImage(&archive, "/bin/busybox", img); err != nil {
			tb.Fatalf("build image %s: %v", img.Name, err)
		}
		if _, err := env.Stack.ImportInto(ctx, stack.CRINamespace, &archive); err != nil {
			tb.Fatal(err)
		}
	}
}

// close removes the pods a failed test left behind, stops the daemon (saving its log when the
// test failed) and removes the pods' cgroup parent and the CRI tests' files.
func (env *Env) close(tb testing.TB) {
	if env.Runtime != nil {
		// Pods a failed test left behind (each test removes its own): their containers'
		// processes outlive a killed shim.
		ctx, cancel := Context()
		defer cancel()
		if pods, err := env.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, pod := range pods.GetItems() {
				env.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.Id})
				env.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.Id})
			}
		}
	}
	if env.Stack != nil {
		if tb.Failed() {
			logPath := filepath.Join(os.TempDir(), "graceful-cri-containerd.log")
			if err := os.WriteFile(logPath, []byte(env.Stack.Log()), 0o644); err == nil {
				tb.Logf("CRI containerd log saved to %s", logPath)
			}
		}
		if err := env.Stack.Close(); err != nil {
			tb.Errorf("close the CRI stack: %v", err)
		}
	}
	stack.RemoveCgroup(env.CgroupParent)
	os.RemoveAll(env.Dir)
}

// waitReady waits until the CRI plugin is ready: it initializes in the background, and learns of
// imported images from events.
func (env *Env) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := env.ready(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ready checks that the CRI runtime is ready and sees the imported images.
func (env *Env) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := env.Runtime.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return err
	}
	for _, c := range st.GetStatus().GetConditions() {
		if c.Type == runtimeapi.RuntimeReady && !c.Status {
			return fmt.Errorf("runtime not ready: %s %s", c.Reason, c.Message)
		}
	}
	for _, name := range env.imageNames {
		resp, err := env.Images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
		if err != nil {
			return err
		}
		if resp.GetImage() == nil {
			return fmt.Errorf("CRI does not see image %s yet", name)
		}
	}
	return nil
}

// Restart restarts the CRI daemon (as a node's restart command does) and waits until CRI is
// ready.
func (env *Env) Restart(tb testing.TB) {
	tb.Helper()
	ctx, cancel := Context()
	defer cancel()
	if err := env.Stack.RestartDaemon(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := env.waitReady(ctx); err != nil {
		tb.Fatalf("CRI not ready after the restart: %v", err)
	}
}

// LogLines returns the daemon's log lines that contain any of subs.
func (env *Env) LogLines(subs ...string) string {
	var b strings.Builder
	for _, line := range strings.Split(env.Stack.Log(), "\n") {
		for _, s := range subs {
			if s != "" && strings.Contains(line, s) {
				b.WriteString(line + "\n")
				break
			}
		}
	}
	return b.String()
}

// Shims lists this CRI daemon's shim processes.
func (env *Env) Shims() []int { return stack.Shims(env.Stack.Dir) }
