// Package docker runs the Docker engine (dockerd, moby) on a test stack's containerd, with
// contrib/docker-daemon.json as written (only its paths rewritten), and drives it through the
// Docker Go SDK, as the docker CLI does.
package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/integration/stack"
)

const (
	dockerdDefaultVersion = "v2.0.0-beta.24"
	// Namespace is the containerd namespace of dockerd's containers.
	Namespace = "graceful-docker"
	// Image is the busybox test image; QuitImage is the same with STOPSIGNAL SIGQUIT.
	Image     = "docker.io/graceful/docker-busybox:latest"
	QuitImage = "docker.io/graceful/docker-busybox-quit:latest"
	// contribConfigPath is the options file contrib/docker-daemon.json names; the test points
	// it at its own copy.
	contribConfigPath = "/etc/containerd/graceful-docker.toml"
	// OptionsGrace is the grace period of the options file of the graceful-custom runtime.
	OptionsGrace = 2 * time.Second
	// contribInitPath is the init-path contrib/docker-daemon.json names (where make install
	// puts graceful-init); the test points it at the stack's.
	contribInitPath = "/usr/local/bin/graceful-init"
)

// optionsFile is the test's options file for the graceful-custom runtime.
var optionsFile = fmt.Sprintf("grace_period = %q\nstop_signals = [\"SIGTERM\", \"SIGQUIT\"]\n", OptionsGrace)

// Env is a private dockerd on a test stack's containerd.
type Env struct {
	// Dir holds dockerd's config, data root, exec root, socket and log, and the containers' /out.
	Dir    string
	Client *client.Client
	stack  *stack.Stack
	daemon *stack.Daemon
	ids    []string // every container created
}

// Start starts dockerd (installed by install-docker.sh) on s's containerd and loads the test
// images; at cleanup it removes every container, stops dockerd and checks that no shim nor mount
// of it is left.
func Start(tb testing.TB, s *stack.Stack) *Env {
	tb.Helper()
	bin := stack.Tool(tb, "dockerd", stack.ToolVersion("DOCKERD_VERSION", dockerdDefaultVersion), "install-docker.sh")
	dir, err := os.MkdirTemp("/run", "graceful-docker-")
	if err != nil {
		tb.Fatal(err)
	}
	d := &Env{Dir: dir, stack: s}
	// dockerd creates /run/docker/plugins whatever its exec root: remove what it created.
	_, runDockerErr := os.Stat("/run/docker")
	cgroupParent := "/" + filepath.Base(dir)
	tb.Cleanup(func() {
		d.close(tb, cgroupParent)
		if os.IsNotExist(runDockerErr) {
			os.Remove("/run/docker/plugins")
			os.Remove("/run/docker")
		}
	})

	optionsPath := filepath.Join(dir, "graceful-docker.toml")
	if err := os.WriteFile(optionsPath, []byte(optionsFile), 0o644); err != nil {
		tb.Fatal(err)
	}
	daemonJSON := filepath.Join(dir, "daemon.json")
	config, err := daemonConfig(filepath.Join(stack.ModuleRoot(), "contrib", "docker-daemon.json"), optionsPath,
		filepath.Join(s.Dir, "bin", "graceful-init"))
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(daemonJSON, config, 0o644); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("daemon.json (contrib/docker-daemon.json, paths rewritten):\n%s", config)

	sock := filepath.Join(dir, "docker.sock")
	// Everything private is on the command line, so daemon.json stays contrib's.
	cmd := exec.Command(bin,
		"--config-file", daemonJSON,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--host", "unix://"+sock,
		"--containerd", s.Address,
		"--containerd-namespace", Namespace,
		"--containerd-plugins-namespace", Namespace+"-plugins",
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--userland-proxy=false",
		"--storage-driver", "overlayfs",
		"--cgroup-parent", cgroupParent,
	)
	cmd.Env = append(os.Environ(), "PATH="+strings.Join([]string{s.ContainerdBin, s.Bin, os.Getenv("PATH")}, ":"))
	start := time.Now()
	if d.daemon, err = stack.StartDaemon("dockerd", filepath.Join(dir, "dockerd.log"), cmd, syscall.SIGTERM); err != nil {
		tb.Fatal(err)
	}
	if d.Client, err = client.New(client.WithHost("unix://"+sock), client.WithAPIVersionNegotiation()); err != nil {
		tb.Fatal(err)
	}
	d.waitReady(tb)
	d.checkInfo(tb, start)
	for _, img := range []stack.ImageOptions{{Name: Image}, {Name: QuitImage, StopSignal: "SIGQUIT"}} {
		d.loadImage(tb, img)
	}
	return d
}

// waitReady asks dockerd until it answers: it has no readiness notification without systemd.
func (d *Env) waitReady(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := d.Client.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		cancel()
		if err == nil {
			return
		}
		if exited, exit := d.daemon.Exited(100 * time.Millisecond); exited {
			tb.Fatalf("dockerd exited: %v\n%s", exit, d.daemon.Log(0))
		}
		if time.Now().After(deadline) {
			tb.Fatalf("dockerd not answering after 60s: %v", err)
		}
	}
}

// checkInfo checks that dockerd has contrib's runtimes and took graceful-init as its init.
func (d *Env) checkInfo(tb testing.TB, start time.Time) {
	tb.Helper()
	info, err := d.Client.Info(context.Background(), client.InfoOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range []string{"graceful", "graceful-custom"} {
		if _, ok := info.Info.Runtimes[r]; !ok {
			tb.Fatalf("dockerd has no runtime %q: %v", r, info.Info.Runtimes)
		}
	}
	// dockerd runs `init-path --version` and parses tini's "NAME version V - git.COMMIT" form.
	if info.Info.InitCommit.ID != stack.InitTestCommit {
		tb.Fatalf("docker info: init commit %q (binary %s), want %q parsed from graceful-init --version",
			info.Info.InitCommit.ID, info.Info.InitBinary, stack.InitTestCommit)
	}
	tb.Logf("dockerd %s ready after %v (storage driver %s, containerd %s)", info.Info.ServerVersion,
		time.Since(start).Round(time.Millisecond), info.Info.Driver, d.stack.Address)
}

// close removes every container, stops dockerd and checks that none of its shims and mounts is
// left; it saves dockerd's log when the test failed.
func (d *Env) close(tb testing.TB, cgroupParent string) {
	if d.Client != nil {
		d.RemoveAll(tb)
		d.Client.Close()
	}
	if d.daemon != nil {
		d.daemon.Stop(tb, 30*time.Second)
		if tb.Failed() {
			d.daemon.SaveLog(tb)
		}
	}
	if shims := shims(); len(shims) > 0 {
		tb.Errorf("shims left after dockerd exited: %v", shims)
	}
	for _, m := range stack.MountsUnder(d.Dir) {
		tb.Errorf("mount left after dockerd exited: %s", m)
		unix.Unmount(m, unix.MNT_DETACH)
	}
	stack.RemoveCgroup(cgroupParent)
	os.RemoveAll(d.Dir)
}

// daemonConfig reads contrib's daemon.json and points every options.ConfigPath that names
// contribConfigPath at optionsPath, and its init-path at initPath (the stack's graceful-init);
// nothing else changes.
func daemonConfig(contrib, optionsPath, initPath string) ([]byte, error) {
	data, err := os.ReadFile(contrib)
	if err != nil {
		return nil, err
	}
	var config map[string]any
	if err := json.Unmarshal(data, &config); err != nil {
		return nil, fmt.Errorf("%s: %w", contrib, err)
	}
	runtimes, _ := config["runtimes"].(map[string]any)
	rewritten := 0
	for name, r := range runtimes {
		rt, _ := r.(map[string]any)
		opts, _ := rt["options"].(map[string]any)
		if p, ok := opts["ConfigPath"]; ok {
			if p != contribConfigPath {
				return nil, fmt.Errorf("%s: runtime %s: ConfigPath %v, the test knows only %s", contrib, name, p, contribConfigPath)
			}
			opts["ConfigPath"] = optionsPath
			rewritten++
		}
	}
	if rewritten == 0 {
		return nil, fmt.Errorf("%s: no runtime with options.ConfigPath %s", contrib, contribConfigPath)
	}
	if p := config["init-path"]; p != contribInitPath {
		return nil, fmt.Errorf("%s: init-path %v, the test knows only %s", contrib, p, contribInitPath)
	}
	config["init-path"] = initPath
	return json.MarshalIndent(config, "", "  ")
}

// loadImage builds a busybox OCI archive and loads it (docker load): no registry, no pull.
func (d *Env) loadImage(tb testing.TB, opts stack.ImageOptions) {
	tb.Helper()
	var archive bytes.Buffer
	if err := stack.BuildImage(&archive, "/bin/busybox", opts); err != nil {
		tb.Fatal(err)
	}
	res, err := d.Client.ImageLoad(context.Background(), &archive, client.ImageLoadWithQuiet(true))
	if err != nil {
		tb.Fatalf("load %s: %v", opts.Name, err)
	}
	defer res.Close()
	out, err := io.ReadAll(res)
	if err != nil || bytes.Contains(out, []byte(`"error"`)) {
		tb.Fatalf("load %s: %v %s", opts.Name, err, out)
	}
	if _, err := d.Client.ImageInspect(context.Background(), opts.Name); err != nil {
		tb.Fatalf("image %s after load: %v (%s)", opts.Name, err, out)
	}
}
