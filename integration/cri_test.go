package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/cri"
	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// The CRI tests run a private containerd of their own (package cri, not the shared one of
// TestMain) with the CRI plugin configured for the graceful shim in both forms a Kubernetes node
// can use, and drive it as the kubelet does, through the CRI gRPC API: host-network pods (no
// CNI), a busybox pause image imported locally, containers with /out bind-mounted from the host.

func TestCRI(t *testing.T) {
	start := time.Now()
	env := cri.Start(t, cri.Setup{Images: []stack.ImageOptions{{Name: criStopQuitImage, StopSignal: "SIGQUIT"}}})
	t.Logf("CRI daemon ready after %v", time.Since(start).Round(time.Millisecond))
	for _, h := range env.Handlers {
		t.Run(h.Name, func(t *testing.T) {
			t.Run("stop", func(t *testing.T) { testCRIStop(t, env, h) })
			t.Run("pod-annotation-grace", func(t *testing.T) { testCRIPodAnnotationGrace(t, env, h) })
			t.Run("shared-pid", func(t *testing.T) { testCRISharedPID(t, env, h, runtimeapi.NamespaceMode_POD) })
			t.Run("host-pid", func(t *testing.T) { testCRISharedPID(t, env, h, runtimeapi.NamespaceMode_NODE) })
			t.Run("init-main-exit", func(t *testing.T) { testCRIInitMainExit(t, env, h) })
			t.Run("stop-signal", func(t *testing.T) { testCRIStopSignal(t, env, h) })
		})
	}
}

// criLoop keeps a shell busy in a way that lets its traps run promptly.
const criLoop = `while :; do sleep 0.05; done`

// The scripts' processes carry @TAG@ (a tag unique to the container, see cri.Pod.Start) in their
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
func testCRIStop(t *testing.T, env *cri.Env, h *cri.Handler) {
	p := env.RunPod(t, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	p.CheckShim(t)

	t.Run("child-handler-runs", func(t *testing.T) {
		c := p.Start(t, "trapping", criTrappingChild, nil)
		c.WaitFile(t, "child-ready")
		// The check for leftover processes must see the running ones: init and child.
		if procs := p.ProcessesLeft(c.Name); len(procs) < 2 {
			t.Fatalf("found %d tagged processes of the running container, want init and its child: %v", len(procs), procs)
		}
		took := p.Stop(t, c, 10)
		t.Logf("StopContainer(10) took %v", took.Round(time.Millisecond))
		if got := c.Marker("child"); got != "clean" {
			t.Errorf("the child's TERM handler did not complete (marker %q)", got)
		}
		if took < 300*time.Millisecond || took > 3*time.Second {
			t.Errorf("StopContainer took %v, want about the child's 0.3s cleanup", took)
		}
		p.Exited(t, c, 0)
		p.DrainLogged(t, c)
		p.NoProcessLeft(t, c)
	})

	t.Run("config-grace", func(t *testing.T) {
		c := p.Start(t, "ignoring", criIgnoringChild, nil)
		c.WaitFile(t, "child-ready")
		took := p.Stop(t, c, 10)
		t.Logf("grace %v from the handler's configuration: StopContainer(10) took %v", h.Grace, took.Round(time.Millisecond))
		// The grace applied is read from the stop's report; the time bound (3 s of margin on a
		// loaded machine) only catches a stop that did not wait for it, or waited for another.
		if took < h.Grace || took >= h.Grace+3*time.Second {
			t.Errorf("StopContainer took %v, want between %v and %v (the handler's grace period)", took, h.Grace, h.Grace+3*time.Second)
		}
		if got := p.DrainGrace(t, c); got != h.Grace {
			t.Errorf("the stop's drain had a grace period of %v, want the handler's %v", got, h.Grace)
		}
		p.Exited(t, c, 0)
		p.NoProcessLeft(t, c)
	})

	t.Run("timeout-escalation", func(t *testing.T) {
		// A 30s grace period (container annotation) outlasts StopContainer's 2s timeout.
		c := p.Start(t, "escalated", criIgnoringChild, map[string]string{"io.containerd.graceful.v2.grace-period": "30s"})
		c.WaitFile(t, "child-ready")
		const timeout = 2 * time.Second
		took := p.Stop(t, c, int64(timeout/time.Second))
		t.Logf("grace 30s: StopContainer(2) took %v", took.Round(time.Millisecond))
		if took < timeout || took >= timeout+3*time.Second {
			t.Errorf("StopContainer(2) took %v, want between %v (the drain holds init's TERM) and %v (containerd's SIGKILL, far below the 30 s grace)", took, timeout, timeout+3*time.Second)
		}
		// Exit code: 137 when containerd's SIGKILL ends init, or init's own 0 when init had
		// already handled its TERM (and the shim held its exit while the others drained).
		if st := p.Status(t, c); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || (st.GetExitCode() != 137 && st.GetExitCode() != 0) {
			t.Errorf("container %s: state %v exit code %d (%s), want exited with 137 or 0", c.Name, st.GetState(), st.GetExitCode(), st.GetReason())
		}
		p.DrainLogged(t, c)
		p.NoProcessLeft(t, c)
	})

	t.Run("termination-grace-period", func(t *testing.T) {
		// kubelet's container annotation io.kubernetes.pod.terminationGracePeriod (allowlisted by
		// container_annotations) caps the drain so that it ends before kubelet's SIGKILL at 3s,
		// although the grace period is 30s. StopContainer's timeout is 10s here (kubelet would
		// pass 3), so that containerd's own SIGKILL cannot be what ends the stop.
		c := p.Start(t, "kubelet-grace", criIgnoringChild, map[string]string{
			"io.containerd.graceful.v2.grace-period":   "30s",
			"io.kubernetes.pod.terminationGracePeriod": "3",
		})
		c.WaitFile(t, "child-ready")
		took := p.Stop(t, c, 10)
		t.Logf("grace 30s, terminationGracePeriod 3: StopContainer(10) took %v", took.Round(time.Millisecond))
		if took < time.Second || took >= 3*time.Second {
			t.Errorf("StopContainer took %v, want the drain to end before kubelet's SIGKILL at 3s (and not at once)", took)
		}
		p.Exited(t, c, 0)
		p.DrainLogged(t, c)
		p.NoProcessLeft(t, c)
	})

	t.Run("sandbox-passthrough", func(t *testing.T) { checkSandboxPassthrough(t, p) })

	p.Teardown(t)
}

// checkSandboxPassthrough sends SIGTERM to the pod's sandbox (pause) container, which the shim
// forwards untouched: the pause process, PID 1 of its namespace without a TERM handler, drops it
// and the pod stays ready. (A graceful stop would have SIGKILLed it instead.)
func checkSandboxPassthrough(t *testing.T, p *cri.Pod) {
	t.Helper()
	ctx, cancel := cri.Context()
	defer cancel()
	k8s := namespaces.WithNamespace(ctx, stack.CRINamespace)
	sandbox, err := p.Env.Stack.Client.LoadContainer(k8s, p.ID)
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
	if pause.WaitExit(2 * time.Second) {
		t.Errorf("the pause process exited after a SIGTERM to the sandbox: the signal was not forwarded untouched")
	}
	st, err := task.Status(k8s)
	if err != nil || st.Status != "running" {
		t.Errorf("after SIGTERM the sandbox task is %q (%v), want running", st.Status, err)
	}
	ps, err := p.Env.Runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.ID})
	if err != nil || ps.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("after SIGTERM to the sandbox the pod is %v (%v), want ready", ps.GetStatus().GetState(), err)
	}
	for _, line := range strings.Split(p.Env.Stack.Log(), "\n") {
		if strings.Contains(line, "graceful stop") && strings.Contains(line, "id="+p.ID) {
			t.Errorf("the shim ran a graceful stop for the sandbox: %s", line)
		}
	}
}

// criStopQuitImage is the test image with StopSignal SIGQUIT in its config, as nginx's.
const criStopQuitImage = "docker.io/graceful/busybox-stopquit:latest"

// A container's own stop signal drains with no annotation: the pod's lifecycle.stopSignal
// (ContainerConfig.stop_signal, SIGINT here) and the image's StopSignal (SIGQUIT), which
// containerd's StopContainer sends instead of SIGTERM, and which the shim reads from CRI's
// container record. Init traps the signal and exits 0; the child's TERM handler runs.
func testCRIStopSignal(t *testing.T, env *cri.Env, h *cri.Handler) {
	p := env.RunPod(t, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	for _, tc := range []struct {
		name, signal string
		edit         func(*runtimeapi.ContainerConfig)
	}{
		{"lifecycle-stop-signal", "INT", func(c *runtimeapi.ContainerConfig) { c.StopSignal = runtimeapi.Signal_SIGNAL_SIGINT }},
		{"image-stop-signal", "QUIT", func(c *runtimeapi.ContainerConfig) { c.Image = &runtimeapi.ImageSpec{Image: criStopQuitImage} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := p.StartWith(t, tc.name, `: @TAG@
trap "exit 0" `+tc.signal+`
sh -c ': @TAG@; trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; touch /out/child-ready; `+criLoop+`' &
echo started
`+criLoop, nil, tc.edit)
			c.WaitFile(t, "child-ready")
			took := p.Stop(t, c, 10)
			t.Logf("stop signal SIG%s: StopContainer(10) took %v", tc.signal, took.Round(time.Millisecond))
			if got := c.Marker("child"); got != "clean" {
				t.Errorf("SIG%s did not drain: the child's TERM handler did not complete (marker %q)", tc.signal, got)
			}
			p.Exited(t, c, 0)
			p.DrainLogged(t, c)
			p.NoProcessLeft(t, c)
		})
	}
	p.Teardown(t)
}

// Under graceful-init (the handler's init = true, or the container annotation for the other
// handlers), the main process exits 3 by itself while a helper traps TERM and needs 0.3s: the
// helper's handler runs, the container's exit code is the main process's 3, and the drain is
// logged as a stop.
func testCRIInitMainExit(t *testing.T, env *cri.Env, h *cri.Handler) {
	p := env.RunPod(t, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	var annotations map[string]string
	if !h.Init {
		annotations = map[string]string{"io.containerd.graceful.v2.init": "true"}
	}
	c := p.Start(t, "main-exit", `: @TAG@
sh -c ': @TAG@; trap "sleep 0.3; echo clean > /out/child; exit 0" TERM; touch /out/child-ready; `+criLoop+`' &
while [ ! -e /out/go ]; do sleep 0.05; done
exit 3`, annotations)
	c.WaitFile(t, "child-ready")
	if err := os.WriteFile(filepath.Join(c.OutDir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for p.Status(t, c).GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		if time.Now().After(deadline) {
			t.Fatalf("the container did not exit after its main process did")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Exited(t, c, 3)
	if got := c.Marker("child"); got != "clean" {
		t.Errorf("the helper's TERM handler did not complete (marker %q): zapped", got)
	}
	p.DrainLogged(t, c)
	p.NoProcessLeft(t, c)
	p.Teardown(t)
}

// The pod annotation io.containerd.graceful.v2.grace-period reaches the shim through CRI's
// pod_annotations and beats the handler's configuration: a TERM-ignoring child is SIGKILLed after
// 1s although StopContainer allows 10s.
func testCRIPodAnnotationGrace(t *testing.T, env *cri.Env, h *cri.Handler) {
	p := env.RunPod(t, h, runtimeapi.NamespaceMode_CONTAINER, map[string]string{"io.containerd.graceful.v2.grace-period": "1s"})
	c := p.Start(t, "ignoring", criIgnoringChild, nil)
	c.WaitFile(t, "child-ready")
	took := p.Stop(t, c, 10)
	t.Logf("pod annotation grace 1s: StopContainer(10) took %v", took.Round(time.Millisecond))
	if took < time.Second || took > 4*time.Second {
		t.Errorf("StopContainer took %v, want between 1s and 4s (the pod annotation's grace period, not the 10 s default)", took)
	}
	p.Exited(t, c, 0)
	p.DrainLogged(t, c)
	p.NoProcessLeft(t, c)
	p.Teardown(t)
}

// Containers that share a PID namespace (pidMode POD: shareProcessNamespace; NODE: hostPID): the
// stop of container A drains A's processes only; container B in the same namespace and, with
// hostPID, a host process do not get TERM (each records any TERM, and a WINCH sent after the stop
// proves by its record that a stray TERM would be recorded by then), and each process of B and the
// host process is still alive at the end (a pidfd on each: a SIGKILL cannot be trapped).
func testCRISharedPID(t *testing.T, env *cri.Env, h *cri.Handler, pidMode runtimeapi.NamespaceMode) {
	hostDir := t.TempDir()
	host := exec.Command("/bin/sh", "-c", `trap "echo got > `+hostDir+`/term" TERM; trap "echo flushed > `+hostDir+`/flush" WINCH; touch `+hostDir+`/ready; `+criLoop)
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	hostDone := make(chan struct{})
	go func() { host.Wait(); close(hostDone) }()
	t.Cleanup(func() { host.Process.Kill(); <-hostDone })

	p := env.RunPod(t, h, pidMode, nil)
	p.CheckShim(t)
	a := p.Start(t, "a", criTrappingChild, nil)
	b := p.Start(t, "b", criSentinel, nil)
	a.WaitFile(t, "child-ready")
	b.WaitFile(t, "child-ready")
	if err := stack.WaitFile(filepath.Join(hostDir, "ready"), 10*time.Second); err != nil {
		t.Fatalf("host sentinel not ready: %v", err)
	}
	bInit, bChild := sentinelPids(t, p, b)
	sentinels := []struct {
		what  string
		h     *process.Handle
		flush string // the file its WINCH trap writes
	}{
		{"b's init", openPid(t, "b's init", bInit), filepath.Join(b.OutDir, "init-flush")},
		{"b's child", openPid(t, "b's child", bChild), filepath.Join(b.OutDir, "child-flush")},
		{"the host sentinel", openPid(t, "the host sentinel", host.Process.Pid), filepath.Join(hostDir, "flush")},
	}

	took := p.Stop(t, a, 10)
	t.Logf("%v PID namespace: StopContainer(a, 10) took %v", pidMode, took.Round(time.Millisecond))
	if got := a.Marker("child"); got != "clean" {
		t.Errorf("a's child TERM handler did not complete (marker %q)", got)
	}
	if took > 3*time.Second {
		t.Errorf("StopContainer took %v, want about the child's 0.3s cleanup", took)
	}
	p.Exited(t, a, 0)
	p.DrainLogged(t, a)
	p.NoProcessLeft(t, a)

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
		for !stack.FileExists(s.flush) {
			if s.h.Exited() || time.Now().After(deadline) {
				t.Errorf("%s did not record its WINCH (exited: %v)", s.what, s.h.Exited())
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, m := range []string{"init-term", "child-term"} {
		if got := b.Marker(m); got != "" {
			t.Errorf("container b got TERM (/out/%s) when a was stopped", m)
		}
	}
	if stack.FileExists(filepath.Join(hostDir, "term")) {
		t.Errorf("the host sentinel got TERM when a was stopped")
	}
	if st := p.Status(t, b); st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container b is %v after a's stop, want running", st.GetState())
	}
	p.Teardown(t)
}

// sentinelPids returns the host PIDs of the init and the child of container c (criSentinel),
// told apart from their loops' short-lived forks (which carry the same command line until they
// exec sleep) by their parents: init's parent carries no tag, the child's parent is init.
func sentinelPids(t *testing.T, p *cri.Pod, c *cri.Container) (init, child int) {
	t.Helper()
	tag := []byte(p.Tag(c.Name))
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
		t.Fatalf("container %s: init candidates %v, want one", c.Name, inits)
	}
	for _, pid := range children {
		if st, err := process.ReadStatus(pid); err == nil && st.PPid == inits[0] {
			return inits[0], pid
		}
	}
	t.Fatalf("container %s: no child of init %d among %v", c.Name, inits[0], children)
	return 0, 0
}
