//go:build nerdctl

package integration

// make test-nerdctl: the real nerdctl binary (install-nerdctl.sh builds it into the stack cache)
// against the stack's containerd, under the stock runtime and graceful side by side.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/graceful-shim/graceful/integration/stack"
)

// nerdctlNamespace is the containerd namespace the nerdctl tests use (apart from the stack's).
const nerdctlNamespace = "graceful-nerdctl"

// Test images, loaded with nerdctl load: busybox, and busybox whose config says STOPSIGNAL
// SIGQUIT.
const (
	nerdctlImage     = "docker.io/graceful/nerdctl-busybox:latest"
	nerdctlQuitImage = "docker.io/graceful/nerdctl-busybox-quit:latest"
)

// nerdctlEnv runs nerdctl against the stack's containerd with a data root of the test's own.
type nerdctlEnv struct {
	bin, dataRoot string
}

func startNerdctl(t *testing.T) *nerdctlEnv {
	t.Helper()
	// The nerdctl that install-nerdctl.sh builds.
	bin := stack.Tool(t, "nerdctl", stack.ToolVersion("NERDCTL_VERSION", "v2.4.2"), "install-nerdctl.sh")
	n := &nerdctlEnv{bin: bin, dataRoot: t.TempDir()}
	t.Cleanup(func() { n.removeAll(t) })
	if out, err := n.run("version"); err != nil {
		t.Fatalf("nerdctl version: %v\n%s", err, out)
	} else {
		t.Logf("nerdctl version:\n%s", out)
	}
	for _, img := range []stack.ImageOptions{{Name: nerdctlImage}, {Name: nerdctlQuitImage, StopSignal: "SIGQUIT"}} {
		var archive bytes.Buffer
		if err := stack.BuildImage(&archive, "/bin/busybox", img); err != nil {
			t.Fatal(err)
		}
		cmd := n.command("load")
		cmd.Stdin = &archive
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nerdctl load %s: %v\n%s", img.Name, err, out)
		}
	}
	return n
}

// command is nerdctl with the global flags that point it at the stack.
func (n *nerdctlEnv) command(args ...string) *exec.Cmd {
	global := []string{"--address", theStack.Address, "--namespace", nerdctlNamespace,
		"--data-root", n.dataRoot, "--cgroup-manager", "cgroupfs", "--snapshotter", "overlayfs",
		"--cni-path", filepath.Join(n.dataRoot, "cni"), "--cni-netconfpath", filepath.Join(n.dataRoot, "cni-conf")}
	cmd := exec.Command(n.bin, append(global, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+n.dataRoot)
	return cmd
}

// run runs nerdctl and returns its combined output.
func (n *nerdctlEnv) run(args ...string) (string, error) {
	out, err := n.command(args...).CombinedOutput()
	return string(out), err
}

// must is run, failing the test on an error.
func (n *nerdctlEnv) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.run(args...)
	if err != nil {
		t.Fatalf("nerdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

// removeAll removes every container of the namespace (nerdctl rm -f).
func (n *nerdctlEnv) removeAll(t *testing.T) {
	out, err := n.run("ps", "-a", "-q")
	if err != nil {
		t.Errorf("nerdctl ps: %v\n%s", err, out)
		return
	}
	if ids := strings.Fields(out); len(ids) > 0 {
		if out, err := n.run(append([]string{"rm", "-f"}, ids...)...); err != nil {
			t.Errorf("nerdctl rm -f: %v\n%s", err, out)
		}
	}
}

// nerdctlContainer is a container that a test started with nerdctl run -d.
type nerdctlContainer struct {
	name, id string
	outDir   string
}

type nerdctlSpec struct {
	runtime string
	image   string // default nerdctlImage
	script  string
	flags   []string // more nerdctl run flags
}

// start runs a container (nerdctl run -d --net none --runtime R -v OUT:/out) and waits until its
// script has written /out/ready.
func (n *nerdctlEnv) start(t *testing.T, spec nerdctlSpec) *nerdctlContainer {
	t.Helper()
	if spec.image == "" {
		spec.image = nerdctlImage
	}
	out := t.TempDir()
	os.Chmod(out, 0o777)
	name := fmt.Sprintf("n%d-%s", seq.Add(1), short(spec.runtime))
	args := []string{"run", "-d", "--net", "none", "--runtime", spec.runtime, "--name", name, "-v", out + ":/out"}
	args = append(append(args, spec.flags...), spec.image, "sh", "-c", spec.script)
	id := n.must(t, args...)
	c := &nerdctlContainer{name: name, id: id, outDir: out}
	if err := stack.WaitFile(filepath.Join(out, "ready"), 20*time.Second); err != nil {
		logs, _ := n.run("logs", name)
		t.Fatalf("container %s: %v; logs: %s", name, err, logs)
	}
	return c
}

// marker is /out/name of c ("" when not written).
func (c *nerdctlContainer) marker(name string) string { return stack.ReadMarker(c.outDir, name) }

// timed runs nerdctl args and returns how long it took.
func (n *nerdctlEnv) timed(t *testing.T, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	n.must(t, args...)
	return time.Since(start)
}

// exitCode is c's exit code (nerdctl inspect), once it has exited.
func (n *nerdctlEnv) exitCode(t *testing.T, c *nerdctlContainer) int {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		status := n.must(t, "inspect", "--format", "{{.State.Status}}", c.name)
		if status == "exited" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s", c.name, status)
		}
	}
	code, err := strconv.Atoi(n.must(t, "inspect", "--format", "{{.State.ExitCode}}", c.name))
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// removed runs nerdctl rm (-f when force) and checks that nothing of c is left: no container
// record, no task, in containerd.
func (n *nerdctlEnv) removed(t *testing.T, c *nerdctlContainer, force bool) {
	t.Helper()
	args := []string{"rm", c.name}
	if force {
		args = []string{"rm", "-f", c.name}
	}
	n.must(t, args...)
	ctx := namespaces.WithNamespace(context.Background(), nerdctlNamespace)
	if _, err := theStack.Client.LoadContainer(ctx, c.id); !errdefs.IsNotFound(err) {
		t.Fatalf("container %s still known to containerd after nerdctl %s (%v)", c.id, strings.Join(args, " "), err)
	}
	if tasks, err := theStack.Client.TaskService().List(ctx, nil); err == nil {
		for _, task := range tasks.Tasks {
			if task.ID == c.id {
				t.Fatalf("task %s left after nerdctl %s", c.id, strings.Join(args, " "))
			}
		}
	}
}

// Scripts: an init that traps TERM (or QUIT) and exits 0, beside a child whose TERM handler takes
// 0.3 s and writes /out/child; one that ignores TERM.
const (
	nerdctlChild    = `sh -c 'trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; trap "echo hup > /out/child-hup" HUP; : > /out/child-ready; ` + loop + `' &` + "\n"
	nerdctlAwait    = "until [ -e /out/child-ready ]; do :; done\n"
	nerdctlIgnoring = `sh -c 'trap "" TERM; : > /out/ignoring-ready; ` + loop + `' &` + "\n" +
		"until [ -e /out/ignoring-ready ]; do :; done\n"
	nerdctlTrapping = nerdctlChild + nerdctlAwait + `trap "exit 0" TERM; : > /out/ready; ` + loop
)

// TestNerdctl drives the real nerdctl: run, stop, stop -t, kill, an image's STOPSIGNAL, the grace
// period by --annotation, --init and graceful-init, rm -f. The stock runtime loses the children's
// handlers where graceful keeps them, in the same run.
func TestNerdctl(t *testing.T) {
	n := startNerdctl(t)

	// nerdctl stop: init exits at once on TERM; the child's 0.3 s handler runs to its end under
	// graceful, and is zapped under the stock runtime.
	t.Run("stop", func(t *testing.T) {
		for _, runtime := range runtimes {
			t.Run(short(runtime), func(t *testing.T) {
				n.removed(t, n.stopDrained(t, nerdctlSpec{runtime: runtime, script: nerdctlTrapping}), false)
			})
		}
	})

	// nerdctl stop -t 2 with a child that ignores TERM, below graceful's 10 s grace: nerdctl's
	// SIGKILL at 2 s wins and ends everything; init (no trap) dies of it.
	t.Run("stop-timeout", func(t *testing.T) {
		for _, runtime := range runtimes {
			t.Run(short(runtime), func(t *testing.T) {
				c := n.start(t, nerdctlSpec{runtime: runtime, script: nerdctlIgnoring + ": > /out/ready; " + loop})
				took := n.timed(t, "stop", "-t", "2", c.name)
				code := n.exitCode(t, c)
				t.Logf("%s: nerdctl stop -t 2 took %v, exit code %d", short(runtime), took, code)
				if took < 2*time.Second || took >= 5*time.Second {
					t.Errorf("nerdctl stop -t 2 took %v, want about 2 s", took)
				}
				if code != int(exitSIGKILL) {
					t.Errorf("exit code %d, want %d (nerdctl's SIGKILL)", code, exitSIGKILL)
				}
				n.removed(t, c, false)
			})
		}
	})

	// nerdctl kill -s TERM drains like a stop; nerdctl kill -s HUP reaches init only (the child's
	// HUP trap stays silent) and the container runs on.
	t.Run("kill", func(t *testing.T) {
		for _, runtime := range runtimes {
			t.Run(short(runtime), func(t *testing.T) {
				script := nerdctlChild + nerdctlAwait + `trap "echo hup > /out/init-hup" HUP; trap "exit 0" TERM; : > /out/ready; ` + loop
				c := n.start(t, nerdctlSpec{runtime: runtime, script: script})
				n.must(t, "kill", "-s", "HUP", c.name)
				for deadline := time.Now().Add(10 * time.Second); c.marker("init-hup") == ""; time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("init did not get HUP")
					}
				}
				if got := c.marker("child-hup"); got != "" {
					t.Fatalf("the child got HUP (%q): want init only", got)
				}
				if status := n.must(t, "inspect", "--format", "{{.State.Status}}", c.name); status != "running" {
					t.Fatalf("after HUP the container is %s, want running", status)
				}
				start := time.Now()
				n.must(t, "kill", "-s", "TERM", c.name)
				code := n.exitCode(t, c)
				took := time.Since(start)
				t.Logf("%s: nerdctl kill -s TERM: exit after %v, code %d, child %q", short(runtime), took, code, c.marker("child"))
				expectNerdctlDrain(t, runtime, c, took, code, 0)
				n.removed(t, c, false)
			})
		}
	})

	// An image whose config says STOPSIGNAL SIGQUIT: nerdctl stop sends QUIT (init's graceful
	// quit), and graceful drains the child with TERM.
	t.Run("image-stopsignal", func(t *testing.T) {
		for _, runtime := range runtimes {
			t.Run(short(runtime), func(t *testing.T) {
				script := nerdctlChild + nerdctlAwait + `trap "echo quit > /out/init; exit 0" QUIT; trap "echo term > /out/init; exit 0" TERM; : > /out/ready; ` + loop
				c := n.stopDrained(t, nerdctlSpec{runtime: runtime, image: nerdctlQuitImage, script: script})
				if got := c.marker("init"); got != "quit" {
					t.Fatalf("init got %q, want quit (the image's STOPSIGNAL)", got)
				}
				n.removed(t, c, false)
			})
		}
	})

	// --annotation sets graceful's grace period: a child that ignores TERM is SIGKILLed at 1 s,
	// far below nerdctl stop's 10 s.
	t.Run("annotation-grace", func(t *testing.T) {
		c := n.start(t, nerdctlSpec{runtime: stack.GracefulRuntime, script: nerdctlIgnoring + `trap "exit 0" TERM; : > /out/ready; ` + loop,
			flags: []string{"--annotation", "io.containerd.graceful.v2.grace-period=1s"}})
		took := n.timed(t, "stop", c.name)
		code := n.exitCode(t, c)
		t.Logf("grace 1s by annotation: nerdctl stop took %v, exit code %d", took, code)
		if took < time.Second || took >= 4*time.Second {
			t.Errorf("nerdctl stop took %v, want between 1 s (the annotation's grace) and 4 s", took)
		}
		if code != 0 {
			t.Errorf("exit code %d, want 0 (init's TERM trap)", code)
		}
		n.removed(t, c, false)
	})

	// nerdctl run --init (tini, here Debian's static one) with graceful: the app exits at once on
	// the TERM tini forwards, and graceful holds tini while the child's handler runs; the stock
	// runtime zaps it. And graceful-init instead (the init annotation).
	t.Run("init", func(t *testing.T) {
		app := nerdctlChild + nerdctlAwait + `trap "exit 0" TERM; : > /out/ready; ` + loop
		for _, runtime := range runtimes {
			t.Run("tini/"+short(runtime), func(t *testing.T) {
				spec := nerdctlSpec{runtime: runtime, script: app, flags: []string{"--init", "--init-binary", tiniStatic}}
				n.removed(t, n.stopDrained(t, spec), false)
			})
		}
		t.Run("graceful-init", func(t *testing.T) {
			spec := nerdctlSpec{runtime: stack.GracefulRuntime, script: app,
				flags: []string{"--annotation", "io.containerd.graceful.v2.init=true"}}
			n.removed(t, n.stopDrained(t, spec), false)
		})
	})

	// nerdctl rm -f on a running container: SIGKILL, no drain; nothing is left.
	t.Run("rm-force", func(t *testing.T) {
		for _, runtime := range runtimes {
			t.Run(short(runtime), func(t *testing.T) {
				c := n.start(t, nerdctlSpec{runtime: runtime, script: nerdctlTrapping})
				start := time.Now()
				n.removed(t, c, true)
				took := time.Since(start)
				t.Logf("%s: nerdctl rm -f took %v, child %q", short(runtime), took, c.marker("child"))
				if took >= 5*time.Second {
					t.Errorf("nerdctl rm -f took %v, want at once (SIGKILL)", took)
				}
				if got := c.marker("child"); got != "" {
					t.Errorf("the child's TERM handler ran (%q) on rm -f: want a SIGKILL only", got)
				}
			})
		}
	})
}

// stopDrained starts a container of spec, stops it with nerdctl stop and checks the drain
// (expectNerdctlDrain, init's exit code 0). The caller removes it.
func (n *nerdctlEnv) stopDrained(t *testing.T, spec nerdctlSpec) *nerdctlContainer {
	t.Helper()
	c := n.start(t, spec)
	took := n.timed(t, "stop", c.name)
	code := n.exitCode(t, c)
	t.Logf("%s %v: nerdctl stop took %v, init %q, exit code %d, child %q",
		short(spec.runtime), spec.flags, took, c.marker("init"), code, c.marker("child"))
	expectNerdctlDrain(t, spec.runtime, c, took, code, 0)
	return c
}

// expectNerdctlDrain checks a stop's outcome: under graceful the child's handler finished, the
// stop took its 0.3 s and not the whole grace, and init exited with want; under the stock runtime
// the child was zapped (no marker).
func expectNerdctlDrain(t *testing.T, runtime string, c *nerdctlContainer, took time.Duration, code, want int) {
	t.Helper()
	if !zappedUnderStock(t, c.marker("child"), runtime, "child", took) {
		return
	}
	if took < 300*time.Millisecond || took >= 5*time.Second {
		t.Errorf("graceful: the stop took %v, want the child's 0.3 s, far below the 10 s grace", took)
	}
	if code != want {
		t.Errorf("graceful: exit code %d, want %d", code, want)
	}
}
