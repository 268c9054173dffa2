package integration

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

	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// TestDocker runs the Docker engine (dockerd, moby) on the package's private containerd with
// contrib/docker-daemon.json as written (only its paths rewritten) and drives it through the Docker
// Go SDK, as `docker run --runtime graceful` / `docker stop` / `docker kill` / `docker exec` do.
// `make test-docker` runs it (GRACEFUL_DOCKER=1); it needs install-docker.sh's dockerd.
func TestDocker(t *testing.T) {
	if os.Getenv("GRACEFUL_DOCKER") != "1" {
		t.Skip("set GRACEFUL_DOCKER=1 (make test-docker) to run dockerd")
	}
	d := startDocker(t)

	// docker run --runtime graceful, docker stop -t 10: the child's TERM handler (0.3 s) runs to
	// the end, and init, which traps TERM and exits 0, exits 0.
	t.Run("seed-case", func(t *testing.T) {
		c := d.run(t, dockerSpec{runtime: "graceful", script: seedScript})
		c.waitLines(t, "trapped child")
		took, code := d.stop(t, c, 10)
		t.Logf("stop took %v, exit code %d, child marker %q", took, code, c.marker("child"))
		if code != 0 {
			t.Errorf("init exited with code %d, want 0 (it traps TERM)", code)
		}
		if got := c.marker("child"); got != "clean" {
			t.Errorf("the child's TERM handler did not complete (marker %q): the kernel zapped it", got)
		}
		if took > 5*time.Second {
			t.Errorf("stop took %v, want about the child's 0.3 s", took)
		}
	})

	// The grace period from an annotation (docker run --annotation, HostConfig.Annotations, which
	// dockerd copies into the OCI spec): a TERM-ignoring child is SIGKILLed when it ends.
	t.Run("grace-annotation", func(t *testing.T) {
		c := d.run(t, dockerSpec{runtime: "graceful", script: ignoringGraceScript,
			annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "1s"}})
		c.waitLines(t, "trapped ignoring")
		took, code := d.stop(t, c, 10)
		t.Logf("grace 1s: stop took %v, exit code %d", took, code)
		if code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if took < time.Second || took >= 4*time.Second {
			t.Errorf("stop took %v, want between 1s (the grace) and 4s (far below docker's 10 s)", took)
		}
	})

	// docker stop -t 2 below the shim's grace (5 s): docker's SIGKILL at 2 s wins, the shim
	// forwards it at once and the whole container ends. Init (no TERM trap, so the drain is
	// children-first and init waits for it) dies of the SIGKILL: 137.
	t.Run("stop-timeout-below-grace", func(t *testing.T) {
		c := d.run(t, dockerSpec{runtime: "graceful", script: ignoringChild + "echo ready\n" + loop,
			annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "5s"}})
		c.waitLines(t, "trapped ignoring")
		took, code := d.stop(t, c, 2)
		t.Logf("docker stop -t 2, grace 5s: stop took %v, exit code %d", took, code)
		if code != int(exitSIGKILL) {
			t.Errorf("init exited with code %d, want %d (docker's SIGKILL)", code, exitSIGKILL)
		}
		if took < 2*time.Second || took >= 4500*time.Millisecond {
			t.Errorf("stop took %v, want about docker's 2 s, far below the 5 s grace", took)
		}
	})

	// docker kill -s HUP reaches init only; the container keeps running.
	t.Run("sighup-init-only", func(t *testing.T) {
		script := `sh -c 'trap "echo hup > /out/child-hup" HUP; trap "exit 0" TERM; echo trapped child; ` + loop + `' &
trap "echo init-hup" HUP
trap "exit 0" TERM
echo ready
` + loop
		c := d.run(t, dockerSpec{runtime: "graceful", script: script})
		c.waitLines(t, "trapped child")
		if _, err := d.cli.ContainerKill(context.Background(), c.id, client.ContainerKillOptions{Signal: "HUP"}); err != nil {
			t.Fatal(err)
		}
		c.waitLines(t, "init-hup")
		if st := d.inspect(t, c).State; !st.Running {
			t.Fatalf("after docker kill -s HUP the container is %s, want running", st.Status)
		}
		// A HUP pending at the child would be handled before the stop's TERM (lower number).
		if _, code := d.stop(t, c, 10); code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if got := c.marker("child-hup"); got != "" {
			t.Errorf("SIGHUP reached the child")
		}
	})

	// A process started with docker exec is drained on docker stop.
	t.Run("exec-drained", func(t *testing.T) {
		c := d.run(t, dockerSpec{runtime: "graceful", script: "trap \"exit 0\" TERM\necho ready\n" + loop})
		ctx := context.Background()
		ex, err := d.cli.ExecCreate(ctx, c.id, client.ExecCreateOptions{AttachStdout: true, AttachStderr: true,
			Cmd: []string{"sh", "-c", `trap "sleep 0.2; echo clean > /out/exec; exit 0" TERM; echo exec-ready; ` + loop}})
		if err != nil {
			t.Fatal(err)
		}
		att, err := d.cli.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
		if err != nil {
			t.Fatal(err)
		}
		execOut := stack.NewOutput()
		copied := make(chan struct{})
		go func() { stdcopy.StdCopy(execOut, execOut, att.Reader); close(copied) }()
		t.Cleanup(func() { att.Close(); <-copied })
		if err := execOut.WaitLine("exec-ready", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		_, code := d.stop(t, c, 10)
		if code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if got := c.marker("exec"); got != "clean" {
			t.Errorf("the exec process was not drained: marker %q", got)
		}
		<-copied // the exec's streams end with it
		st, err := d.cli.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Running || st.ExitCode != 0 {
			t.Errorf("exec: running %v, exit code %d; want exited 0 (its TERM handler exits 0)", st.Running, st.ExitCode)
		}
	})

	// The graceful-custom runtime of docker-daemon.json: options.ConfigPath names a graceful.toml
	// file (dockerd passes runtimeoptions.v1.Options{ConfigPath}), whose grace_period (2s) holds.
	t.Run("options-configpath-grace", func(t *testing.T) {
		c := d.run(t, dockerSpec{runtime: "graceful-custom", script: ignoringGraceScript})
		c.waitLines(t, "trapped ignoring")
		took, code := d.stop(t, c, 10)
		t.Logf("grace 2s from the options file: stop took %v, exit code %d", took, code)
		if code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if took < dockerOptionsGrace || took >= dockerOptionsGrace+time.Second {
			t.Errorf("stop took %v, want between %v (the options file's grace) and %v", took, dockerOptionsGrace, dockerOptionsGrace+time.Second)
		}
	})

	// An image whose config says STOPSIGNAL SIGQUIT, or docker run --stop-signal SIGQUIT: docker
	// stop sends SIGQUIT (the Kill RPC's signal), which the shim drains only when it is in
	// stop_signals: the options file of graceful-custom lists it, or the container's annotation.
	quitScript := childTraps("child") + `trap "echo init-quit; exit 0" QUIT
trap "exit 0" TERM
echo ready
` + loop
	t.Run("stop-signal-sigquit", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			spec dockerSpec
		}{
			{"image-stopsignal", dockerSpec{runtime: "graceful-custom", image: dockerQuitImage, script: quitScript}},
			{"create-stopsignal", dockerSpec{runtime: "graceful-custom", script: quitScript, stopSignal: "SIGQUIT"}},
			{"annotation-stop-signals", dockerSpec{runtime: "graceful", image: dockerQuitImage, script: quitScript,
				annotations: map[string]string{"io.containerd.graceful.v2.stop-signals": "SIGTERM,SIGQUIT"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := d.run(t, tc.spec)
				c.waitLines(t, "trapped child")
				d.logStopSignalSources(t, c)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				evs, errs := theStack.Client.Subscribe(ctx, `topic=="/graceful/stop",namespace=="`+dockerNamespace+`"`)
				took, code := d.stop(t, c, 10)
				t.Logf("stop took %v, exit code %d, child marker %q", took, code, c.marker("child"))
				defer func() {
					// What reached the shim's Kill: the stop report (published at the stop's end).
					r := waitStopReport(t, evs, errs, c.id)
					t.Logf("the shim's stop report: requested %s, order %s, init signal %s", r.Requested, r.Order, r.InitSignal)
					if r.Requested != "SIGQUIT" {
						t.Errorf("the shim's Kill carried %q, want SIGQUIT", r.Requested)
					}
				}()
				if code != 0 {
					t.Errorf("init exited with code %d, want 0 (it traps QUIT)", code)
				}
				if !strings.Contains(c.output.String(), "init-quit") {
					t.Errorf("init did not get SIGQUIT from docker stop; output %q", c.output.String())
				}
				if got := c.marker("child"); got != "clean" {
					t.Errorf("SIGQUIT did not drain the child (marker %q)", got)
				}
			})
		}
		// Under the graceful runtime (default stop_signals: SIGTERM) the shim forwards SIGQUIT to
		// init only: recorded, not asserted, as the shim may learn docker's stop signal later.
		t.Run("default-stop-signals", func(t *testing.T) {
			c := d.run(t, dockerSpec{runtime: "graceful", image: dockerQuitImage, script: quitScript})
			c.waitLines(t, "trapped child")
			_, code := d.stop(t, c, 10)
			if code != 0 {
				t.Errorf("init exited with code %d, want 0 (it traps QUIT)", code)
			}
			if !strings.Contains(c.output.String(), "init-quit") {
				t.Errorf("init did not get SIGQUIT from docker stop; output %q", c.output.String())
			}
			t.Logf("finding: STOPSIGNAL SIGQUIT under stop_signals [SIGTERM]: the child was drained: %v (marker %q)", c.marker("child") == "clean", c.marker("child"))
		})
	})

	// docker run --init with contrib's init-path (graceful-init, standalone), under the stock
	// runtime and graceful: when the main process exits by itself, and on docker stop, a helper's
	// TERM handler (0.3 s) runs to the end and the container exits with the main process's status.
	t.Run("init-path", func(t *testing.T) {
		for _, runtime := range []string{"runc", "graceful"} {
			t.Run(runtime+"/exit-by-itself", func(t *testing.T) {
				c := d.run(t, dockerSpec{runtime: runtime, init: true, script: childTraps("helper") + `echo ready
while [ ! -e /out/go ]; do sleep 0.05; done
exit 3`})
				c.waitLines(t, "trapped helper")
				d.expectInit(t, c)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				wait := d.cli.ContainerWait(ctx, c.id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
				start := time.Now()
				if err := os.WriteFile(filepath.Join(c.outDir, "go"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				select {
				case res := <-wait.Result:
					if res.StatusCode != 3 {
						t.Errorf("exit code %d, want the main process's 3", res.StatusCode)
					}
				case err := <-wait.Error:
					t.Fatal(err)
				}
				took := time.Since(start)
				if got := c.marker("helper"); got != "clean" {
					t.Errorf("the helper's TERM handler did not complete (marker %q)", got)
				}
				if took > 5*time.Second {
					t.Errorf("the container took %v to exit, want about the helper's 0.3 s", took)
				}
			})
			t.Run(runtime+"/stop", func(t *testing.T) {
				c := d.run(t, dockerSpec{runtime: runtime, init: true, script: childTraps("helper") + "trap \"exit 0\" TERM\necho ready\n" + loop})
				c.waitLines(t, "trapped helper")
				d.expectInit(t, c)
				took, code := d.stop(t, c, 10)
				t.Logf("docker stop: %v, exit code %d, helper marker %q", took, code, c.marker("helper"))
				if code != 0 {
					t.Errorf("exit code %d, want the main process's 0", code)
				}
				if got := c.marker("helper"); got != "clean" {
					t.Errorf("the helper's TERM handler did not complete (marker %q)", got)
				}
				if took > 5*time.Second {
					t.Errorf("docker stop took %v, want about the helper's 0.3 s", took)
				}
			})
		}
	})

	// Nothing is left: no container (docker's or containerd's), no shim, no mount.
	t.Run("nothing-left", func(t *testing.T) {
		d.removeAll(t)
		d.checkNothingLeft(t)
	})
}

const (
	dockerdDefaultVersion = "v2.0.0-beta.24"
	dockerNamespace       = "graceful-docker"
	dockerImage           = "docker.io/graceful/docker-busybox:latest"
	dockerQuitImage       = "docker.io/graceful/docker-busybox-quit:latest"
	// dockerContribConfigPath is the options file contrib/docker-daemon.json names; the test
	// points it at its own copy.
	dockerContribConfigPath = "/etc/containerd/graceful-docker.toml"
	dockerOptionsGrace      = 2 * time.Second
	// dockerContribInitPath is the init-path contrib/docker-daemon.json names (where make
	// install puts graceful-init); the test points it at the stack's.
	dockerContribInitPath = "/usr/local/bin/graceful-init"
)

// dockerOptionsFile is the test's options file for the graceful-custom runtime.
var dockerOptionsFile = fmt.Sprintf("grace_period = %q\nstop_signals = [\"SIGTERM\", \"SIGQUIT\"]\n", dockerOptionsGrace)

// ignoringGraceScript: a TERM-ignoring child; init traps TERM and exits 0.
var ignoringGraceScript = ignoringChild + "trap \"exit 0\" TERM\necho ready\n" + loop

func dockerdVersion() string {
	if v := os.Getenv("DOCKERD_VERSION"); v != "" {
		return v
	}
	return dockerdDefaultVersion
}

// dockerEnv is a private dockerd on the package's containerd.
type dockerEnv struct {
	dir    string
	cli    *client.Client
	cmd    *exec.Cmd
	exited chan error
	ids    []string
}

func startDocker(t *testing.T) *dockerEnv {
	t.Helper()
	bin := filepath.Join(stack.StackDir(), "bin", "dockerd-"+dockerdVersion())
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("dockerd is not installed (bash integration/stack/install-docker.sh): %v", err)
	}
	dir, err := os.MkdirTemp("/run", "graceful-docker-")
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerEnv{dir: dir}
	// dockerd creates /run/docker/plugins whatever its exec root: remove what it created.
	_, runDockerErr := os.Stat("/run/docker")
	cgroupParent := "/" + filepath.Base(dir)
	t.Cleanup(func() {
		if d.cli != nil {
			d.removeAll(t)
			d.cli.Close()
		}
		if d.cmd != nil {
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.exited:
			case <-time.After(30 * time.Second):
				t.Errorf("dockerd did not exit on SIGTERM")
				d.cmd.Process.Kill()
				<-d.exited
			}
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			p := filepath.Join(os.TempDir(), "graceful-dockerd.log")
			if err := os.WriteFile(p, log, 0o644); err == nil {
				t.Logf("dockerd log saved to %s", p)
			}
		}
		if shims := dockerShims(); len(shims) > 0 {
			t.Errorf("shims left after dockerd exited: %v", shims)
		}
		for _, m := range mountsUnder(dir) {
			t.Errorf("mount left after dockerd exited: %s", m)
			unix.Unmount(m, unix.MNT_DETACH)
		}
		removeCgroups(cgroupParent)
		os.RemoveAll(dir)
		if os.IsNotExist(runDockerErr) {
			os.Remove("/run/docker/plugins")
			os.Remove("/run/docker")
		}
	})

	optionsPath := filepath.Join(dir, "graceful-docker.toml")
	if err := os.WriteFile(optionsPath, []byte(dockerOptionsFile), 0o644); err != nil {
		t.Fatal(err)
	}
	daemonJSON := filepath.Join(dir, "daemon.json")
	config, err := dockerDaemonConfig(filepath.Join(stack.ModuleRoot(), "contrib", "docker-daemon.json"), optionsPath,
		filepath.Join(theStack.Dir, "bin", "graceful-init"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(daemonJSON, config, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon.json (contrib/docker-daemon.json, paths rewritten):\n%s", config)

	logFile, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	sock := filepath.Join(dir, "docker.sock")
	// Everything private is on the command line, so daemon.json stays contrib's.
	d.cmd = exec.Command(bin,
		"--config-file", daemonJSON,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--host", "unix://"+sock,
		"--containerd", theStack.Address,
		"--containerd-namespace", dockerNamespace,
		"--containerd-plugins-namespace", dockerNamespace+"-plugins",
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--userland-proxy=false",
		"--storage-driver", "overlayfs",
		"--cgroup-parent", cgroupParent,
	)
	d.cmd.Env = append(os.Environ(), "PATH="+strings.Join([]string{theStack.ContainerdBin, theStack.Bin, os.Getenv("PATH")}, ":"))
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.exited = make(chan error, 1)
	go func() { d.exited <- d.cmd.Wait() }()

	if d.cli, err = client.New(client.WithHost("unix://"+sock), client.WithAPIVersionNegotiation()); err != nil {
		t.Fatal(err)
	}
	// dockerd has no readiness notification without systemd: ask until it answers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := d.cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		cancel()
		if err == nil {
			break
		}
		select {
		case err := <-d.exited:
			d.exited <- err
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("dockerd exited: %v\n%s", err, log)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd not answering after 60s: %v", err)
		}
	}
	info, err := d.cli.Info(context.Background(), client.InfoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"graceful", "graceful-custom"} {
		if _, ok := info.Info.Runtimes[r]; !ok {
			t.Fatalf("dockerd has no runtime %q: %v", r, info.Info.Runtimes)
		}
	}
	// dockerd runs `init-path --version` and parses tini's "NAME version V - git.COMMIT" form.
	if info.Info.InitCommit.ID != stack.InitTestCommit {
		t.Fatalf("docker info: init commit %q (binary %s), want %q parsed from graceful-init --version",
			info.Info.InitCommit.ID, info.Info.InitBinary, stack.InitTestCommit)
	}
	t.Logf("dockerd %s ready after %v (storage driver %s, containerd %s)", info.Info.ServerVersion,
		time.Since(start).Round(time.Millisecond), info.Info.Driver, theStack.Address)

	for _, img := range []stack.ImageOptions{{Name: dockerImage}, {Name: dockerQuitImage, StopSignal: "SIGQUIT"}} {
		d.loadImage(t, img)
	}
	return d
}

// dockerDaemonConfig reads contrib's daemon.json and points every options.ConfigPath that names
// dockerContribConfigPath at optionsPath, and its init-path at initPath (the stack's
// graceful-init); nothing else changes.
func dockerDaemonConfig(contrib, optionsPath, initPath string) ([]byte, error) {
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
			if p != dockerContribConfigPath {
				return nil, fmt.Errorf("%s: runtime %s: ConfigPath %v, the test knows only %s", contrib, name, p, dockerContribConfigPath)
			}
			opts["ConfigPath"] = optionsPath
			rewritten++
		}
	}
	if rewritten == 0 {
		return nil, fmt.Errorf("%s: no runtime with options.ConfigPath %s", contrib, dockerContribConfigPath)
	}
	if p := config["init-path"]; p != dockerContribInitPath {
		return nil, fmt.Errorf("%s: init-path %v, the test knows only %s", contrib, p, dockerContribInitPath)
	}
	config["init-path"] = initPath
	return json.MarshalIndent(config, "", "  ")
}

// loadImage builds a busybox OCI archive and loads it (docker load): no registry, no pull.
func (d *dockerEnv) loadImage(t *testing.T, opts stack.ImageOptions) {
	t.Helper()
	var archive bytes.Buffer
	if err := stack.BuildImage(&archive, "/bin/busybox", opts); err != nil {
		t.Fatal(err)
	}
	res, err := d.cli.ImageLoad(context.Background(), &archive, client.ImageLoadWithQuiet(true))
	if err != nil {
		t.Fatalf("load %s: %v", opts.Name, err)
	}
	defer res.Close()
	out, err := io.ReadAll(res)
	if err != nil || bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("load %s: %v %s", opts.Name, err, out)
	}
	if _, err := d.cli.ImageInspect(context.Background(), opts.Name); err != nil {
		t.Fatalf("image %s after load: %v (%s)", opts.Name, err, out)
	}
}

type dockerSpec struct {
	runtime     string
	image       string // default dockerImage
	script      string
	annotations map[string]string
	stopSignal  string // docker run --stop-signal
	init        bool   // docker run --init: init-path's binary as PID 1
}

type dockerContainer struct {
	id, name string
	outDir   string
	output   *stack.Output
}

// run creates and starts a container (docker run -d --runtime R --network none -v OUT:/out) and
// waits for its "ready" line; it is removed at cleanup.
func (d *dockerEnv) run(t *testing.T, spec dockerSpec) *dockerContainer {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("%s-%d", strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())), seq.Add(1))
	c := &dockerContainer{name: name, outDir: filepath.Join(d.dir, "out", name), output: stack.NewOutput()}
	if err := os.MkdirAll(c.outDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if spec.image == "" {
		spec.image = dockerImage
	}
	created, err := d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:      spec.image,
			Cmd:        []string{"sh", "-c", spec.script},
			StopSignal: spec.stopSignal,
		},
		HostConfig: &container.HostConfig{
			Runtime:     spec.runtime,
			NetworkMode: "none",
			Binds:       []string{c.outDir + ":/out"},
			Annotations: spec.annotations,
			Init:        &spec.init,
		},
	})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	c.id = created.ID
	d.ids = append(d.ids, c.id)
	t.Cleanup(func() {
		if _, err := d.cli.ContainerRemove(context.Background(), c.id, client.ContainerRemoveOptions{Force: true}); err != nil {
			t.Errorf("remove %s: %v", name, err)
		}
	})
	if _, err := d.cli.ContainerStart(ctx, c.id, client.ContainerStartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	logs, err := d.cli.ContainerLogs(ctx, c.id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() { stdcopy.StdCopy(c.output, c.output, logs); close(copied) }()
	t.Cleanup(func() { logs.Close(); <-copied })
	c.waitLines(t, "ready")
	if rt := d.inspect(t, c).HostConfig.Runtime; rt != spec.runtime {
		t.Fatalf("container runtime %q, want %q", rt, spec.runtime)
	}
	return c
}

// expectInit fails the test unless the container's PID 1 is docker's init (init-path's binary,
// which docker mounts as /sbin/docker-init), with the main process as its child.
func (d *dockerEnv) expectInit(t *testing.T, c *dockerContainer) {
	t.Helper()
	st, err := process.ReadStatus(d.inspect(t, c).State.Pid)
	if err != nil || st.Name != "docker-init" {
		t.Fatalf("the container's PID 1 is %q (%v), want docker-init", st.Name, err)
	}
}

func (c *dockerContainer) waitLines(t *testing.T, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if err := c.output.WaitLine(l, 20*time.Second); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
}

func (c *dockerContainer) marker(name string) string {
	data, err := os.ReadFile(filepath.Join(c.outDir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

func (d *dockerEnv) inspect(t *testing.T, c *dockerContainer) container.InspectResponse {
	t.Helper()
	res, err := d.cli.ContainerInspect(context.Background(), c.id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Container
}

// stop is docker stop -t timeout: it returns how long the call took and init's exit code, and
// fails the test unless the container is then exited.
func (d *dockerEnv) stop(t *testing.T, c *dockerContainer, timeout int) (time.Duration, int) {
	t.Helper()
	if st := d.inspect(t, c).State; !st.Running {
		t.Fatalf("%s is %s before the stop, want running", c.name, st.Status)
	}
	start := time.Now()
	if _, err := d.cli.ContainerStop(context.Background(), c.id, client.ContainerStopOptions{Timeout: &timeout}); err != nil {
		t.Fatalf("stop %s: %v", c.name, err)
	}
	took := time.Since(start)
	st := d.inspect(t, c).State
	if st.Running || st.Status != container.StateExited {
		t.Fatalf("%s is %s after docker stop, want exited", c.name, st.Status)
	}
	return took, st.ExitCode
}

// logStopSignalSources records where docker keeps a container's stop signal, as the shim could
// see it: the OCI bundle's annotations, the containerd container's labels and image, that image's
// config, and docker's own container config.
func (d *dockerEnv) logStopSignalSources(t *testing.T, c *dockerContainer) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), dockerNamespace)
	bundle := filepath.Join(theStack.Dir, "state", "io.containerd.runtime.v2.task", dockerNamespace, c.id, "config.json")
	if data, err := os.ReadFile(bundle); err != nil {
		t.Logf("bundle config.json: %v", err)
	} else {
		var spec map[string]any
		json.Unmarshal(data, &spec)
		// Anywhere but the test's own strings: the script (process.args) and the bind mount's
		// source (the out directory, named after the test).
		if p, ok := spec["process"].(map[string]any); ok {
			delete(p, "args")
		}
		delete(spec, "mounts")
		rest, _ := json.Marshal(spec)
		rest = bytes.ToLower(rest)
		mentions := bytes.Contains(rest, []byte("sigquit")) || bytes.Contains(rest, []byte("stopsignal")) || bytes.Contains(rest, []byte("stop-signal"))
		t.Logf("bundle config.json annotations: %v; names the stop signal (but in args and mounts): %v", spec["annotations"], mentions)
	}
	if ctr, err := theStack.Client.LoadContainer(ctx, c.id); err != nil {
		t.Logf("containerd container: %v", err)
	} else if info, err := ctr.Info(ctx); err != nil {
		t.Logf("containerd container info: %v", err)
	} else {
		t.Logf("containerd container labels: %v, image %q, runtime %s", info.Labels, info.Image, info.Runtime.Name)
		if img, err := theStack.Client.GetImage(ctx, info.Image); err != nil {
			t.Logf("containerd image %q: %v", info.Image, err)
		} else if spec, err := img.Spec(ctx); err != nil {
			t.Logf("containerd image %q config: %v", info.Image, err)
		} else {
			t.Logf("containerd image %q config StopSignal %q", info.Image, spec.Config.StopSignal)
		}
	}
	if data, err := os.ReadFile(filepath.Join(d.dir, "root", "containers", c.id, "config.v2.json")); err == nil {
		var cfg struct{ Config struct{ StopSignal string } }
		json.Unmarshal(data, &cfg)
		t.Logf("docker config.v2.json Config.StopSignal %q", cfg.Config.StopSignal)
	}
}

// waitStopReport returns the shim's stop report (topic /graceful/stop) for container id.
func waitStopReport(t *testing.T, evs <-chan *events.Envelope, errs <-chan error, id string) *stack.StopReport {
	t.Helper()
	for {
		select {
		case env := <-evs:
			r, err := stack.DecodeStopReport(env.Event)
			if err != nil {
				t.Fatal(err)
			}
			if r.ContainerID == id {
				return r
			}
		case err := <-errs:
			t.Fatalf("no stop report for %s: %v", id[:12], err)
		}
	}
}

// removeAll removes every container of the daemon (docker rm -f).
func (d *dockerEnv) removeAll(t *testing.T) {
	ctx := context.Background()
	list, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		t.Errorf("list containers: %v", err)
		return
	}
	for _, c := range list.Items {
		if _, err := d.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			t.Errorf("remove %s: %v", c.ID, err)
		}
	}
}

// checkNothingLeft fails unless no docker container, no containerd container of docker's
// namespace, no shim of it and no mount of any of the test's containers is left.
func (d *dockerEnv) checkNothingLeft(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	list, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("docker containers left: %v", list.Items)
	}
	cs, err := theStack.Client.Containers(namespaces.WithNamespace(ctx, dockerNamespace))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		t.Errorf("containerd container left in %s: %s", dockerNamespace, c.ID())
	}
	// A removed container's shim exits right after its delete: wait for its exit on a pidfd.
	for _, pid := range dockerShims() {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone already
		}
		n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10000)
		unix.Close(fd)
		if n == 0 {
			t.Errorf("shim %d of docker's namespace still running 10s after its container was removed", pid)
		}
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		for _, id := range d.ids {
			if strings.Contains(line, id) {
				t.Errorf("mount of container %s left: %s", id[:12], line)
			}
		}
	}
	t.Logf("nothing left of %d containers: no container, shim or mount", len(d.ids))
}

// dockerShims lists the shim processes serving docker's containerd namespace.
func dockerShims() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("containerd-shim")) ||
			!bytes.Contains(cmdline, []byte("\x00-namespace\x00"+dockerNamespace+"\x00")) {
			continue
		}
		var pid int
		fmt.Sscan(e.Name(), &pid)
		pids = append(pids, pid)
	}
	return pids
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var ms []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			ms = append([]string{f[4]}, ms...)
		}
	}
	return ms
}
