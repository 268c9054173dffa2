package cri

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/stack"
)

// The checks a CRI test makes of a stopped container and of a removed pod.

// NoProcessLeft checks that no process of the stopped container is left (a TERM-ignoring child
// was killed).
func (p *Pod) NoProcessLeft(tb testing.TB, c *Container) {
	tb.Helper()
	for _, proc := range p.ProcessesLeft(c.Name) {
		tb.Errorf("process of stopped container %s left: %s", c.Name, proc)
	}
}

// Exited checks that the container exited with the exit code.
func (p *Pod) Exited(tb testing.TB, c *Container, code int32) {
	tb.Helper()
	st := p.Status(tb, c)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != code {
		tb.Errorf("container %s: state %v exit code %d (%s), want exited with %d", c.Name, st.GetState(), st.GetExitCode(), st.GetReason(), code)
	}
}

// DrainLogged checks that the graceful shim logged a graceful stop for the container (the
// handler's pods really run the graceful shim) and returns that log line ("" when none came).
func (p *Pod) DrainLogged(tb testing.TB, c *Container) string {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(p.Env.Stack.Log(), "\n") {
			if strings.Contains(line, "graceful stop") && strings.Contains(line, c.ID) {
				return line
			}
		}
		if time.Now().After(deadline) {
			tb.Errorf("no \"graceful stop\" log line for container %s (%s) of handler %s", c.Name, c.ID, p.Handler.Name)
			return ""
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DrainGrace returns the grace period of container c's drain, from its stop report in the
// daemon's log (0 when there is none).
func (p *Pod) DrainGrace(tb testing.TB, c *Container) time.Duration {
	tb.Helper()
	if m := graceNs.FindStringSubmatch(p.DrainLogged(tb, c)); m != nil {
		ns, _ := strconv.ParseInt(m[1], 10, 64)
		return time.Duration(ns)
	}
	return 0
}

// graceNs finds a drain's grace_ns in a stop report quoted in a log line.
var graceNs = regexp.MustCompile(`grace_ns\\*":(\d+)`)

// CheckShim checks that exactly one shim serves the pod, and that it is the handler's binary.
func (p *Pod) CheckShim(tb testing.TB) {
	tb.Helper()
	pids := p.Env.Stack.ShimPids(p.ID)
	if len(pids) != 1 {
		tb.Fatalf("pod %s: want 1 shim process, found %v", p.ID, pids)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pids[0]))
	if err != nil {
		tb.Fatal(err)
	}
	if exe != p.Handler.Shim {
		tb.Fatalf("pod %s (handler %s) is served by %s, want %s", p.ID, p.Handler.Name, exe, p.Handler.Shim)
	}
}

// Teardown stops and removes the pod as the kubelet does, and checks that nothing is left of it:
// no shim, no container nor sandbox in containerd's k8s.io namespace, no pod in CRI.
func (p *Pod) Teardown(tb testing.TB) {
	tb.Helper()
	ctx, cancel := Context()
	defer cancel()
	start := time.Now()
	if _, err := p.Env.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		tb.Fatalf("StopPodSandbox: %v", err)
	}
	st, err := p.Env.Runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.ID})
	if err != nil {
		tb.Fatalf("PodSandboxStatus: %v", err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		tb.Errorf("after StopPodSandbox the pod is %v", st.GetStatus().GetState())
	}
	stopped := time.Since(start)
	if _, err := p.Env.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		tb.Fatalf("RemovePodSandbox: %v", err)
	}
	p.removed = true
	tb.Logf("StopPodSandbox took %v, RemovePodSandbox %v", stopped.Round(time.Millisecond), (time.Since(start) - stopped).Round(time.Millisecond))

	deadline := time.Now().Add(10 * time.Second)
	for len(p.Env.Stack.ShimPids(p.ID)) > 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("shim of pod %s still running after RemovePodSandbox: %v", p.ID, p.Env.Stack.ShimPids(p.ID))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, proc := range p.ProcessesLeft() {
		tb.Errorf("process of pod %s left after RemovePodSandbox: %s", p.ID, proc)
	}
	k8s := namespaces.WithNamespace(ctx, stack.CRINamespace)
	cs, err := p.Env.Stack.Client.Containers(k8s)
	if err != nil {
		tb.Fatal(err)
	}
	for _, c := range cs {
		tb.Errorf("containerd container %s left in namespace %s", c.ID(), stack.CRINamespace)
	}
	sbs, err := p.Env.Stack.Client.SandboxStore().List(k8s)
	if err != nil {
		tb.Fatal(err)
	}
	for _, sb := range sbs {
		tb.Errorf("containerd sandbox %s left in namespace %s", sb.ID, stack.CRINamespace)
	}
	pods, err := p.Env.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		tb.Fatal(err)
	}
	for _, pod := range pods.GetItems() {
		tb.Errorf("CRI pod %s (%s) left", pod.Id, pod.GetMetadata().GetName())
	}
}
