// Package stack runs a private containerd (with runc and both the stock and the graceful shim) for
// the integration tests, the demo and the benchmarks: it installs the pinned binaries when missing
// (install.sh), builds a busybox OCI image without any registry, starts the daemon with its own
// root, state and sockets, and removes every trace of it again. It also holds what the test
// environments built on it (packages cri, docker and kube) share: marker files, event
// subscriptions, helper daemons, the opt-in tools' binaries.
package stack

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// Namespace is the containerd namespace every container of the stack lives in.
const Namespace = "graceful-test"

// Runtime names.
const (
	StockRuntime    = "io.containerd.runc.v2"
	GracefulRuntime = "io.containerd.graceful.v2"
)

// Options configure a stack.
type Options struct {
	// Env is added to the daemon's environment, and so to every shim's.
	Env []string
	// ExtraConfig is appended to the daemon's config.toml (version 3).
	ExtraConfig string
	// Imports is the config's top-level imports list (drop-in files or globs).
	Imports []string
	// EmulateKernel, when set (a release such as "6.1"), builds the graceful shim and its
	// helpers with the kernelemu tag and runs them as on that kernel (GRACEFUL_EMULATE_KERNEL;
	// see process/kernel.go): for measuring an older kernel's fallbacks beside the native ones.
	EmulateKernel string
}

// EmulateKernelEnv is process.EmulateKernelEnv, which exists only in kernelemu builds.
const EmulateKernelEnv = "GRACEFUL_EMULATE_KERNEL"

// Stack is a running private containerd.
type Stack struct {
	// Dir holds the daemon's root, state, sockets, log and the shim binary.
	Dir string
	// Address is the daemon's gRPC socket.
	Address string
	// Bin holds runc; ContainerdBin holds containerd, ctr and containerd-shim-runc-v2.
	Bin, ContainerdBin string
	// Client is connected to the daemon, in Namespace.
	Client *containerd.Client
	// Image is the busybox test image, unpacked for overlayfs.
	Image containerd.Image

	daemon     *Daemon
	configPath string
	env        []string
}

// startDaemon starts containerd, appending to its log.
func (s *Stack) startDaemon() error {
	cmd := exec.Command(filepath.Join(s.ContainerdBin, "containerd"), "--config", s.configPath)
	cmd.Env = s.env
	var err error
	s.daemon, err = startDaemon("containerd", filepath.Join(s.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, cmd, syscall.SIGTERM)
	return err
}

// RestartDaemon SIGKILLs containerd — its shims and containers keep running, as on a node whose
// containerd crashes — starts it again and waits until it serves.
func (s *Stack) RestartDaemon(ctx context.Context) error {
	s.daemon.kill()
	if err := s.startDaemon(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := s.Client.IsServing(ctx)
		if ok && err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd not serving after restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ModuleRoot is the graceful source tree this package was built from.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// StackDir is where install.sh caches runc and containerd.
func StackDir() string {
	if d := os.Getenv("STACK_DIR"); d != "" {
		return d
	}
	return "/var/cache/graceful-stack"
}

// ContainerdVersion is the containerd tag the stack runs.
func ContainerdVersion() string { return ToolVersion("CONTAINERD_VERSION", "v2.4.2") }

// ConfigVersion is the config.toml version the daemon takes: 3 from containerd 2.0 on, 2 before.
func ConfigVersion() int {
	if v := ContainerdVersion(); strings.HasPrefix(v, "v1.") || v == "debian" {
		return 2
	}
	return 3
}

// Install runs install.sh when runc or containerd is not cached yet.
func Install() error {
	cdir := filepath.Join(StackDir(), "containerd-"+ContainerdVersion())
	for _, p := range []string{filepath.Join(StackDir(), "bin", "runc"), filepath.Join(cdir, "containerd"), filepath.Join(cdir, "ctr")} {
		if _, err := os.Stat(p); err != nil {
			cmd := exec.Command("bash", filepath.Join(ModuleRoot(), "integration", "stack", "install.sh"))
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("install the stack: %w", err)
			}
			return nil
		}
	}
	return nil
}

// Start installs what is missing and starts a private containerd.
func Start(ctx context.Context, opts Options) (_ *Stack, retErr error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the stack needs root (containerd, runc, mounts)")
	}
	if Cgroup2Required() && !Cgroup2() {
		return nil, fmt.Errorf("GRACEFUL_CGROUP2=1 but /sys/fs/cgroup is not a cgroup2 hierarchy (run make test-cgroup2)")
	}
	if err := Install(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("/run", "graceful-")
	if err != nil {
		return nil, err
	}
	s := &Stack{
		Dir:           dir,
		Address:       filepath.Join(dir, "c.sock"),
		Bin:           filepath.Join(StackDir(), "bin"),
		ContainerdBin: filepath.Join(StackDir(), "containerd-"+ContainerdVersion()),
	}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()
	shimBin := filepath.Join(dir, "bin")
	tags := buildTags
	if opts.EmulateKernel != "" {
		tags = "kernelemu"
		opts.Env = append(opts.Env, EmulateKernelEnv+"="+opts.EmulateKernel)
	}
	if err := buildGoTags(filepath.Join(shimBin, "containerd-shim-graceful-v2"), "./cmd/containerd-shim-graceful-v2", tags, true); err != nil {
		return nil, err
	}
	// graceful-init and graceful-hold next to the shim, where the shim looks for them.
	if err := buildHelpersTags(shimBin, tags); err != nil {
		return nil, err
	}
	imports := ""
	if len(opts.Imports) > 0 {
		quoted := make([]string, len(opts.Imports))
		for i, p := range opts.Imports {
			quoted[i] = fmt.Sprintf("%q", p)
		}
		imports = "imports = [" + strings.Join(quoted, ", ") + "]\n"
	}
	config := fmt.Sprintf(`version = %[5]d
%[6]sroot = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  level = "info"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), s.Address, s.Address+".ttrpc", ConfigVersion(), imports) + opts.ExtraConfig
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	s.configPath = configPath
	s.env = append(os.Environ(), "PATH="+strings.Join([]string{shimBin, s.ContainerdBin, s.Bin, os.Getenv("PATH")}, ":"))
	s.env = append(s.env, opts.Env...)
	if err := s.startDaemon(); err != nil {
		return nil, err
	}

	if s.Client, err = containerd.New(s.Address, containerd.WithDefaultNamespace(Namespace), containerd.WithTimeout(30*time.Second)); err != nil {
		return nil, fmt.Errorf("connect to containerd: %w\n%s", err, s.Log())
	}
	if err := s.importImage(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// PrebuiltEnv names a directory of binaries built beforehand, which the stack copies instead of
// building them: the kernel VM's, whose emulated CPUs would take minutes per go build. Each is
// named after its package's directory (containerd-shim-graceful-v2, graceful-hold, gohandler, ...)
// or is graceful-init, built with the stack's version and commit.
const PrebuiltEnv = "GRACEFUL_STACK_PREBUILT"

// prebuilt copies the binary name from PrebuiltEnv's directory to out and reports whether it
// did; it fails if that directory is set but lacks the binary.
func prebuilt(out, name string) (bool, error) {
	dir := os.Getenv(PrebuiltEnv)
	if dir == "" {
		return false, nil
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return false, fmt.Errorf("%s=%s: %w", PrebuiltEnv, dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return false, err
	}
	return true, os.WriteFile(out, data, 0o755)
}

// buildGo builds a main package of this module into out, with the test binary's tags.
func buildGo(out, pkg string, cgo bool) error { return buildGoTags(out, pkg, buildTags, cgo) }

// buildGoTags builds a main package of this module into out with the build tags tags.
func buildGoTags(out, pkg, tags string, cgo bool) error {
	if ok, err := prebuilt(out, filepath.Base(pkg)); ok || err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-tags", tags, "-o", out, pkg)
	cmd.Dir = ModuleRoot()
	cmd.Env = os.Environ()
	if !cgo {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return nil
}

func (s *Stack) importImage(ctx context.Context) error {
	var files []ImageFile
	for _, name := range []string{"gohandler", "goinit"} {
		out := filepath.Join(s.Dir, "bin", name)
		if err := buildGo(out, "./integration/testdata/"+name, false); err != nil {
			return err
		}
		files = append(files, ImageFile{Path: "bin/" + name, Source: out})
	}
	var archive bytes.Buffer
	if err := BuildImage(&archive, "/bin/busybox", ImageOptions{Extra: files}); err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	img, err := s.ImportInto(ctx, Namespace, &archive)
	if err != nil {
		return err
	}
	s.Image = img
	return nil
}

// Log returns the daemon's log (which includes every shim's log).
func (s *Stack) Log() string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, "containerd.log"))
	return string(data)
}

// Ctr runs ctr against the stack.
func (s *Stack) Ctr(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(s.ContainerdBin, "ctr"), append([]string{"--address", s.Address, "--namespace", Namespace}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Close removes every container, stops the daemon and its shims, unmounts and removes Dir.
func (s *Stack) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.Client != nil {
		ctx := containerdNamespace(ctx)
		if cs, err := s.Client.Containers(ctx); err == nil {
			for _, c := range cs {
				forceDelete(ctx, c)
			}
		}
		s.Client.Close()
	}
	if s.daemon != nil {
		s.daemon.Cmd.Process.Signal(syscall.SIGTERM)
		if exited, _ := s.daemon.Exited(10 * time.Second); !exited {
			s.daemon.kill()
		}
	}
	killShims(s.Dir)
	unmountUnder(s.Dir)
	// runc leaves the namespace's parent cgroup (/<namespace>) once its containers are gone, in
	// each v1 hierarchy or the unified one.
	RemoveCgroup(Namespace)
	return os.RemoveAll(s.Dir)
}

// killShims SIGKILLs any shim process left whose command line names dir.
func killShims(dir string) {
	for _, pid := range Shims(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	for _, t := range MountsUnder(dir) {
		unix.Unmount(t, unix.MNT_DETACH)
	}
}
