package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/graceful-shim/graceful/integration/docker"
	"github.com/graceful-shim/graceful/integration/stack"
)

// TestDocker runs the Docker engine (dockerd, moby) on the package's private containerd with
// contrib/docker-daemon.json as written (only its paths rewritten) and drives it through the Docker
// Go SDK, as `docker run --runtime graceful` / `docker stop` / `docker kill` / `docker exec` do.
// `make test-docker` runs it (GRACEFUL_DOCKER=1); it needs install-docker.sh's dockerd.
func TestDocker(t *testing.T) {
	skipUnlessOptedIn(t, "GRACEFUL_DOCKER", "make test-docker", "run dockerd")
	d := docker.Start(t, theStack)

	// docker run --runtime graceful, docker stop -t 10: the child's TERM handler (0.3 s) runs to
	// the end, and init, which traps TERM and exits 0, exits 0.
	t.Run("seed-case", func(t *testing.T) {
		c := d.Run(t, docker.Spec{Runtime: "graceful", Script: seedScript})
		c.WaitLines(t, "trapped child")
		took, code := d.Stop(t, c, 10)
		t.Logf("stop took %v, exit code %d, child marker %q", took, code, c.Marker("child"))
		if code != 0 {
			t.Errorf("init exited with code %d, want 0 (it traps TERM)", code)
		}
		if got := c.Marker("child"); got != "clean" {
			t.Errorf("the child's TERM handler did not complete (marker %q): the kernel zapped it", got)
		}
		if took > 5*time.Second {
			t.Errorf("stop took %v, want about the child's 0.3 s", took)
		}
	})

	// The grace period from an annotation (docker run --annotation, HostConfig.Annotations, which
	// dockerd copies into the OCI spec): a TERM-ignoring child is SIGKILLed when it ends.
	t.Run("grace-annotation", func(t *testing.T) {
		c := d.Run(t, docker.Spec{Runtime: "graceful", Script: ignoringGraceScript,
			Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "1s"}})
		c.WaitLines(t, "trapped ignoring")
		took, code := d.Stop(t, c, 10)
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
		c := d.Run(t, docker.Spec{Runtime: "graceful", Script: ignoringChild + "echo ready\n" + loop,
			Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "5s"}})
		c.WaitLines(t, "trapped ignoring")
		took, code := d.Stop(t, c, 2)
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
		c := d.Run(t, docker.Spec{Runtime: "graceful", Script: script})
		c.WaitLines(t, "trapped child")
		if _, err := d.Client.ContainerKill(context.Background(), c.ID, client.ContainerKillOptions{Signal: "HUP"}); err != nil {
			t.Fatal(err)
		}
		c.WaitLines(t, "init-hup")
		if st := d.Inspect(t, c).State; !st.Running {
			t.Fatalf("after docker kill -s HUP the container is %s, want running", st.Status)
		}
		// A HUP pending at the child would be handled before the stop's TERM (lower number).
		if _, code := d.Stop(t, c, 10); code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if got := c.Marker("child-hup"); got != "" {
			t.Errorf("SIGHUP reached the child")
		}
	})

	// A process started with docker exec is drained on docker stop.
	t.Run("exec-drained", func(t *testing.T) {
		c := d.Run(t, docker.Spec{Runtime: "graceful", Script: "trap \"exit 0\" TERM\necho ready\n" + loop})
		ctx := context.Background()
		ex, err := d.Client.ExecCreate(ctx, c.ID, client.ExecCreateOptions{AttachStdout: true, AttachStderr: true,
			Cmd: []string{"sh", "-c", `trap "sleep 0.2; echo clean > /out/exec; exit 0" TERM; echo exec-ready; ` + loop}})
		if err != nil {
			t.Fatal(err)
		}
		att, err := d.Client.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
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
		_, code := d.Stop(t, c, 10)
		if code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if got := c.Marker("exec"); got != "clean" {
			t.Errorf("the exec process was not drained: marker %q", got)
		}
		<-copied // the exec's streams end with it
		st, err := d.Client.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
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
		c := d.Run(t, docker.Spec{Runtime: "graceful-custom", Script: ignoringGraceScript})
		c.WaitLines(t, "trapped ignoring")
		took, code := d.Stop(t, c, 10)
		t.Logf("grace 2s from the options file: stop took %v, exit code %d", took, code)
		if code != 0 {
			t.Errorf("init exited with code %d, want 0", code)
		}
		if took < docker.OptionsGrace || took >= docker.OptionsGrace+time.Second {
			t.Errorf("stop took %v, want between %v (the options file's grace) and %v", took, docker.OptionsGrace, docker.OptionsGrace+time.Second)
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
			spec docker.Spec
		}{
			{"image-stopsignal", docker.Spec{Runtime: "graceful-custom", Image: docker.QuitImage, Script: quitScript}},
			{"create-stopsignal", docker.Spec{Runtime: "graceful-custom", Script: quitScript, StopSignal: "SIGQUIT"}},
			{"annotation-stop-signals", docker.Spec{Runtime: "graceful", Image: docker.QuitImage, Script: quitScript,
				Annotations: map[string]string{"io.containerd.graceful.v2.stop-signals": "SIGTERM,SIGQUIT"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := d.Run(t, tc.spec)
				c.WaitLines(t, "trapped child")
				d.LogStopSignalSources(t, c)
				reports := theStack.Subscribe(context.Background(), t, 30*time.Second, `topic=="/graceful/stop",namespace=="`+docker.Namespace+`"`)
				took, code := d.Stop(t, c, 10)
				t.Logf("stop took %v, exit code %d, child marker %q", took, code, c.Marker("child"))
				defer func() {
					// What reached the shim's Kill: the stop report (published at the stop's end).
					r := reports.NextReport(t, c.ID)
					t.Logf("the shim's stop report: requested %s, order %s, init signal %s", r.Requested, r.Order, r.InitSignal)
					if r.Requested != "SIGQUIT" {
						t.Errorf("the shim's Kill carried %q, want SIGQUIT", r.Requested)
					}
				}()
				if code != 0 {
					t.Errorf("init exited with code %d, want 0 (it traps QUIT)", code)
				}
				if !strings.Contains(c.Output.String(), "init-quit") {
					t.Errorf("init did not get SIGQUIT from docker stop; output %q", c.Output.String())
				}
				if got := c.Marker("child"); got != "clean" {
					t.Errorf("SIGQUIT did not drain the child (marker %q)", got)
				}
			})
		}
		// Under the graceful runtime (default stop_signals: SIGTERM) the shim forwards SIGQUIT to
		// init only: recorded, not asserted, as the shim may learn docker's stop signal later.
		t.Run("default-stop-signals", func(t *testing.T) {
			c := d.Run(t, docker.Spec{Runtime: "graceful", Image: docker.QuitImage, Script: quitScript})
			c.WaitLines(t, "trapped child")
			_, code := d.Stop(t, c, 10)
			if code != 0 {
				t.Errorf("init exited with code %d, want 0 (it traps QUIT)", code)
			}
			if !strings.Contains(c.Output.String(), "init-quit") {
				t.Errorf("init did not get SIGQUIT from docker stop; output %q", c.Output.String())
			}
			t.Logf("finding: STOPSIGNAL SIGQUIT under stop_signals [SIGTERM]: the child was drained: %v (marker %q)", c.Marker("child") == "clean", c.Marker("child"))
		})
	})

	// docker run --init with contrib's init-path (graceful-init, standalone), under the stock
	// runtime and graceful: when the main process exits by itself, and on docker stop, a helper's
	// TERM handler (0.3 s) runs to the end and the container exits with the main process's status.
	t.Run("init-path", func(t *testing.T) {
		for _, runtime := range []string{"runc", "graceful"} {
			t.Run(runtime+"/exit-by-itself", func(t *testing.T) {
				c := d.Run(t, docker.Spec{Runtime: runtime, Init: true, Script: childTraps("helper") + `echo ready
while [ ! -e /out/go ]; do sleep 0.05; done
exit 3`})
				c.WaitLines(t, "trapped helper")
				d.ExpectInit(t, c)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				wait := d.Client.ContainerWait(ctx, c.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
				start := time.Now()
				if err := os.WriteFile(filepath.Join(c.OutDir, "go"), nil, 0o644); err != nil {
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
				if got := c.Marker("helper"); got != "clean" {
					t.Errorf("the helper's TERM handler did not complete (marker %q)", got)
				}
				if took > 5*time.Second {
					t.Errorf("the container took %v to exit, want about the helper's 0.3 s", took)
				}
			})
			t.Run(runtime+"/stop", func(t *testing.T) {
				c := d.Run(t, docker.Spec{Runtime: runtime, Init: true, Script: childTraps("helper") + "trap \"exit 0\" TERM\necho ready\n" + loop})
				c.WaitLines(t, "trapped helper")
				d.ExpectInit(t, c)
				took, code := d.Stop(t, c, 10)
				t.Logf("docker stop: %v, exit code %d, helper marker %q", took, code, c.Marker("helper"))
				if code != 0 {
					t.Errorf("exit code %d, want the main process's 0", code)
				}
				if got := c.Marker("helper"); got != "clean" {
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
		d.RemoveAll(t)
		d.CheckNothingLeft(t)
	})
}

// ignoringGraceScript: a TERM-ignoring child; init traps TERM and exits 0.
var ignoringGraceScript = ignoringChild + "trap \"exit 0\" TERM\necho ready\n" + loop
