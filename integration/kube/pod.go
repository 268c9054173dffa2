package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// Container is a container of a test pod: busybox running Script (sh -c), /out mounted.
type Container struct {
	Name, Script string
	StopSignal   string   // lifecycle.stopSignal
	Liveness     []string // an exec liveness probe, every second
}

// PodSpec is a test pod.
type PodSpec struct {
	Name, RuntimeClass string
	Grace              int // terminationGracePeriodSeconds
	SharePID           bool
	RestartNever       bool
	Annotations        map[string]string
	Containers         []Container
}

// Pod is a pod that RunPod saw Ready.
type Pod struct {
	Name   string
	OutDir string // the host directory mounted at /out (hostPath)
	UID    string
	k      *Cluster
}

// RunPod applies the pod (on the node, hostNetwork) with kubectl and waits until it is Ready.
func (k *Cluster) RunPod(tb testing.TB, spec PodSpec) *Pod {
	tb.Helper()
	k.seq++
	p := &Pod{k: k, Name: fmt.Sprintf("%s-%d", spec.Name, k.seq), OutDir: filepath.Join(k.Dir, "out", fmt.Sprintf("%s-%d", spec.Name, k.seq))}
	if err := os.MkdirAll(p.OutDir, 0o777); err != nil {
		tb.Fatal(err)
	}
	manifest, err := json.Marshal(p.manifest(spec))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if _, err := k.Kubectl(nil, "get", "pod", p.Name); err == nil {
			k.Kubectl(nil, "delete", "pod", p.Name, "--wait=true", "--timeout=60s")
		}
	})
	if out, err := k.Kubectl(manifest, "apply", "-f", "-"); err != nil {
		tb.Fatalf("apply pod %s: %v\n%s", p.Name, err, out)
	}
	if out, err := k.Kubectl(nil, "wait", "--for=condition=Ready", "pod/"+p.Name, "--timeout=120s"); err != nil {
		desc, _ := k.Kubectl(nil, "describe", "pod", p.Name)
		tb.Fatalf("pod %s not Ready: %v\n%s\n%s", p.Name, err, out, desc)
	}
	uid, err := k.Kubectl(nil, "get", "pod", p.Name, "-o", "jsonpath={.metadata.uid}")
	if err != nil {
		tb.Fatal(err)
	}
	p.UID = strings.TrimSpace(uid)
	return p
}

// manifest is the pod's manifest, for kubectl apply.
func (p *Pod) manifest(spec PodSpec) map[string]any {
	var containers []map[string]any
	for _, c := range spec.Containers {
		cm := map[string]any{
			"name": c.Name, "image": stack.ImageName, "imagePullPolicy": "Never",
			"command":      []string{"sh", "-c", c.Script},
			"volumeMounts": []map[string]any{{"name": "out", "mountPath": "/out"}},
		}
		if c.StopSignal != "" {
			cm["lifecycle"] = map[string]any{"stopSignal": c.StopSignal}
		}
		if c.Liveness != nil {
			cm["livenessProbe"] = map[string]any{"exec": map[string]any{"command": c.Liveness},
				"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 5}
		}
		containers = append(containers, cm)
	}
	podSpec := map[string]any{
		"nodeName": node, "hostNetwork": true, "dnsPolicy": "Default",
		"automountServiceAccountToken": false, "enableServiceLinks": false,
		"runtimeClassName": spec.RuntimeClass, "terminationGracePeriodSeconds": spec.Grace,
		"shareProcessNamespace": spec.SharePID, "os": map[string]any{"name": "linux"},
		"containers": containers,
		"volumes":    []map[string]any{{"name": "out", "hostPath": map[string]any{"path": p.OutDir, "type": "Directory"}}},
	}
	if spec.RestartNever {
		podSpec["restartPolicy"] = "Never"
	}
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.Name, "namespace": "default"},
		"spec":     podSpec}
	if spec.Annotations != nil {
		pod["metadata"].(map[string]any)["annotations"] = spec.Annotations
	}
	return pod
}

// DeletePod runs kubectl delete pod and returns how long it took until the pod was gone.
func (k *Cluster) DeletePod(tb testing.TB, p *Pod) time.Duration {
	tb.Helper()
	start := time.Now()
	if out, err := k.Kubectl(nil, "delete", "pod", p.Name, "--wait=true", "--timeout=120s"); err != nil {
		tb.Fatalf("kubectl delete pod %s: %v\n%s", p.Name, err, out)
	}
	return time.Since(start)
}

// WaitFile waits until the pod wrote /out/name (a container has no way to tell the host); it
// fails tb, with kubectl describe pod, when that takes over 30s.
func (p *Pod) WaitFile(tb testing.TB, name string) {
	tb.Helper()
	if err := stack.WaitFile(filepath.Join(p.OutDir, name), 30*time.Second); err != nil {
		desc, _ := p.k.Kubectl(nil, "describe", "pod", p.Name)
		tb.Fatalf("pod %s: %v:\n%s", p.Name, err, desc)
	}
}

// Marker returns the content of /out/name, or "" when the pod did not write it.
func (p *Pod) Marker(name string) string { return stack.ReadMarker(p.OutDir, name) }

// criContainers are the pod's containerd containers (CRI's labels), by container name; the
// sandbox is "".
func (p *Pod) criContainers(tb testing.TB) map[string]string {
	tb.Helper()
	ctx := namespaces.WithNamespace(context.Background(), stack.CRINamespace)
	cs, err := p.k.CRI.Stack.Client.Containers(ctx, `labels."io.kubernetes.pod.uid"==`+strconv.Quote(p.UID))
	if err != nil {
		tb.Fatal(err)
	}
	ids := map[string]string{}
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		name := labels["io.kubernetes.container.name"]
		if labels["io.cri-containerd.kind"] == "sandbox" {
			name = ""
		}
		ids[name] = c.ID()
	}
	return ids
}

// ContainerID is the containerd id of the pod's container name.
func (p *Pod) ContainerID(tb testing.TB, name string) string {
	tb.Helper()
	id, ok := p.criContainers(tb)[name]
	if !ok {
		tb.Fatalf("pod %s has no container %s", p.Name, name)
	}
	return id
}

// TaskPid is the host pid of the init of the pod's container name ("" for the sandbox).
func (p *Pod) TaskPid(tb testing.TB, name string) int {
	tb.Helper()
	ctx := namespaces.WithNamespace(context.Background(), stack.CRINamespace)
	id, ok := p.criContainers(tb)[name]
	if !ok {
		tb.Fatalf("pod %s has no container %q", p.Name, name)
	}
	c, err := p.k.CRI.Stack.Client.LoadContainer(ctx, id)
	if err != nil {
		tb.Fatal(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		tb.Fatalf("task of %s: %v", name, err)
	}
	return int(task.Pid())
}

// SandboxPid is the host pid of the pod's pause process.
func (p *Pod) SandboxPid(tb testing.TB) int {
	tb.Helper()
	return p.TaskPid(tb, "")
}

// InitAndChild returns the host pids of a container's init and of its one child.
func (p *Pod) InitAndChild(tb testing.TB, name string) (init, child int) {
	tb.Helper()
	init = p.TaskPid(tb, name)
	var shells []int // not the sleeps of init's loop
	for _, pid := range stack.Children(init, stack.Alive) {
		if st, err := process.ReadStatus(pid); err == nil && st.Name == "sh" {
			shells = append(shells, pid)
		}
	}
	if len(shells) != 1 {
		tb.Fatalf("container %s: init %d has the shell children %v, want one", name, init, shells)
	}
	return init, shells[0]
}

// Subscribe subscribes to one topic of the CRI daemon's events in CRI's namespace, for 60s at
// most.
func (k *Cluster) Subscribe(tb testing.TB, topic string) *stack.Events {
	tb.Helper()
	return k.CRI.Stack.Subscribe(context.Background(), tb, 60*time.Second, `topic==`+strconv.Quote(topic)+`,namespace=="`+stack.CRINamespace+`"`)
}
