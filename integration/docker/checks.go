package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/moby/client"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// RemoveAll removes every container of the daemon (docker rm -f).
func (d *Env) RemoveAll(tb testing.TB) {
	ctx := context.Background()
	list, err := d.Client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		tb.Errorf("list containers: %v", err)
		return
	}
	for _, c := range list.Items {
		if _, err := d.Client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			tb.Errorf("remove %s: %v", c.ID, err)
		}
	}
}

// CheckNothingLeft fails unless no docker container, no containerd container of docker's
// namespace, no shim of it and no mount of any of the test's containers is left.
func (d *Env) CheckNothingLeft(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	list, err := d.Client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		tb.Fatal(err)
	}
	if len(list.Items) != 0 {
		tb.Errorf("docker containers left: %v", list.Items)
	}
	cs, err := d.stack.Client.Containers(namespaces.WithNamespace(ctx, Namespace))
	if err != nil {
		tb.Fatal(err)
	}
	for _, c := range cs {
		tb.Errorf("containerd container left in %s: %s", Namespace, c.ID())
	}
	// A removed container's shim exits right after its delete: wait for its exit on a pidfd.
	for _, pid := range shims() {
		h, err := process.Open(pid)
		if err != nil {
			continue // gone already
		}
		exited := h.WaitExit(10 * time.Second)
		h.Close()
		if !exited {
			tb.Errorf("shim %d of docker's namespace still running 10s after its container was removed", pid)
		}
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		for _, id := range d.ids {
			if strings.Contains(line, id) {
				tb.Errorf("mount of container %s left: %s", id[:12], line)
			}
		}
	}
	tb.Logf("nothing left of %d containers: no container, shim or mount", len(d.ids))
}

// shims lists the shim processes serving docker's containerd namespace.
func shims() []int { return stack.Shims("\x00-namespace\x00" + Namespace + "\x00") }

// LogStopSignalSources records where docker keeps a container's stop signal, as the shim could
// see it: the OCI bundle's annotations, the containerd container's labels and image, that image's
// config, and docker's own container config.
func (d *Env) LogStopSignalSources(tb testing.TB, c *Container) {
	tb.Helper()
	ctx := namespaces.WithNamespace(context.Background(), Namespace)
	bundle := filepath.Join(d.stack.Dir, "state", "io.containerd.runtime.v2.task", Namespace, c.ID, "config.json")
	if data, err := os.ReadFile(bundle); err != nil {
		tb.Logf("bundle config.json: %v", err)
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
		tb.Logf("bundle config.json annotations: %v; names the stop signal (but in args and mounts): %v", spec["annotations"], mentions)
	}
	if ctr, err := d.stack.Client.LoadContainer(ctx, c.ID); err != nil {
		tb.Logf("containerd container: %v", err)
	} else if info, err := ctr.Info(ctx); err != nil {
		tb.Logf("containerd container info: %v", err)
	} else {
		tb.Logf("containerd container labels: %v, image %q, runtime %s", info.Labels, info.Image, info.Runtime.Name)
		if img, err := d.stack.Client.GetImage(ctx, info.Image); err != nil {
			tb.Logf("containerd image %q: %v", info.Image, err)
		} else if spec, err := img.Spec(ctx); err != nil {
			tb.Logf("containerd image %q config: %v", info.Image, err)
		} else {
			tb.Logf("containerd image %q config StopSignal %q", info.Image, spec.Config.StopSignal)
		}
	}
	if data, err := os.ReadFile(filepath.Join(d.Dir, "root", "containers", c.ID, "config.v2.json")); err == nil {
		var cfg struct{ Config struct{ StopSignal string } }
		json.Unmarshal(data, &cfg)
		tb.Logf("docker config.v2.json Config.StopSignal %q", cfg.Config.StopSignal)
	}
}
