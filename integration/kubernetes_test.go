package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/kube"
	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// TestKubernetes runs a single-node Kubernetes cluster — etcd, kube-apiserver and a kubelet, built
// by install-kubernetes.sh — on a private CRI containerd configured with contrib/containerd-config.toml
// (paths rewritten), applies contrib/runtimeclass.yaml and drives pods with kubectl: pods name their
// node, so no scheduler is needed. etcd, the apiserver and the kubelet run in a private mount and
// network namespace, so that the kubelet's sysctls, iptables chains, /var/lib/kubelet and
// /var/log/pods never touch the host; containerd and its shims run in the host's namespaces, as on
// a node. `make test-kubernetes` runs it (GRACEFUL_KUBERNETES=1).
func TestKubernetes(t *testing.T) {
	skipUnlessOptedIn(t, "GRACEFUL_KUBERNETES", "make test-kubernetes", "run a kubelet")
	k := kube.Start(t)

	// runtimeClassName graceful, terminationGracePeriodSeconds 10, a run.sh init (no TERM trap: as
	// PID 1 it drops kubelet's SIGTERM) and a child whose TERM handler needs 0.3 s. kubectl delete
	// pod: the child's handler runs to the end and the pod is gone well before the 10 s.
	t.Run("term-handler", func(t *testing.T) {
		p := k.RunPod(t, kube.PodSpec{Name: "term-handler", RuntimeClass: "graceful", Grace: 10,
			Containers: []kube.Container{{Name: "app", Script: kubeChild("child") + "echo > /out/ready-app\nwait"}}})
		p.WaitFile(t, "ready-child")
		id := p.ContainerID(t, "app")
		reports := k.Subscribe(t, "/graceful/stop")
		took := k.DeletePod(t, p)
		t.Logf("kubectl delete pod took %v (terminationGracePeriodSeconds 10)", took.Round(time.Millisecond))
		if got := p.Marker("child"); got != "clean" {
			t.Errorf("the child's TERM handler did not complete (marker %q): it was SIGKILLed", got)
		}
		if took >= 7*time.Second {
			t.Errorf("kubectl delete pod took %v, want well below the 10 s grace (the child needs 0.3 s)", took)
		}
		if r := reports.NextReportWithin(t, id, 20*time.Second); r != nil {
			t.Logf("stop report: requested %s, order %s, init %s, notes %v", r.Requested, r.Order, r.InitSignal, r.Notes)
			if r.Requested != "SIGTERM" {
				t.Errorf("kubelet's stop reached the shim as %s, want SIGTERM", r.Requested)
			}
		}
	})

	// A TERM-ignoring child, terminationGracePeriodSeconds 3 and a pod annotation asking for a
	// 20 s drain: the shim cuts the drain to 2 s (3 s less its 1 s margin), SIGKILLs the child and
	// lets init exit 0, all before kubelet's SIGKILL at 3 s would have ended init with 137.
	t.Run("grace-cut", func(t *testing.T) {
		p := k.RunPod(t, kube.PodSpec{Name: "grace-cut", RuntimeClass: "graceful", Grace: 3,
			Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "20s"},
			Containers:  []kube.Container{{Name: "app", Script: kubeIgnoringChild + "trap \"exit 0\" TERM\necho > /out/ready-app\n" + loop}}})
		p.WaitFile(t, "ready-ignoring")
		id := p.ContainerID(t, "app")
		init, child := p.InitAndChild(t, "app")
		childDone := openPid(t, "the TERM-ignoring child", child).Exited
		reports := k.Subscribe(t, "/graceful/stop")
		exits := k.Subscribe(t, "/tasks/exit")
		took := k.DeletePod(t, p)
		t.Logf("kubectl delete pod took %v (terminationGracePeriodSeconds 3)", took.Round(time.Millisecond))
		if !childDone() {
			t.Errorf("the TERM-ignoring child %d is still alive", child)
		}
		if st := exits.NextExit(t, id, init); st != 0 {
			t.Errorf("init exited with %d, want 0: the shim's drain did not end before kubelet's SIGKILL", st)
		}
		r := reports.NextReportWithin(t, id, 20*time.Second)
		if r == nil {
			return
		}
		t.Logf("stop report: order %s, notes %v, drain %s", r.Order, r.Notes, kubeDrainSummary(r))
		if !r.GraceCut || !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "grace period cut to") }) {
			t.Errorf("the report does not say the grace was cut: grace_cut %v, notes %v", r.GraceCut, r.Notes)
		}
		if w := r.Kubernetes; w == nil || w.Namespace != "default" || w.Pod != p.Name || w.PodUID != p.UID || w.Container != "app" {
			t.Errorf("the report names the workload %+v, want default/%s (uid %s) container app", w, p.Name, p.UID)
		}
		if r.Drain != nil && time.Duration(r.Drain.Grace) > 2*time.Second {
			t.Errorf("the drain's grace is %v, want it cut to at most 2s (3s less the 1s margin)", time.Duration(r.Drain.Grace))
		}
		killed := false
		if r.Drain != nil {
			for _, proc := range r.Drain.Processes {
				if proc.Outcome == "killed" {
					killed = true
					if after := time.Duration(proc.After); after >= 3*time.Second {
						t.Errorf("the shim SIGKILLed pid %d after %v, not before kubelet's SIGKILL at 3s", proc.Pid, after)
					}
				}
			}
		}
		if !killed {
			t.Errorf("the report shows no process killed at the grace's end: %s", kubeDrainSummary(r))
		}
	})

	// shareProcessNamespace: the pause process is PID 1 of the pod's namespace. A failing liveness
	// probe makes kubelet stop container a alone (restartPolicy Never): a is drained, while the
	// pause process and container b, in the same PID namespace, are untouched; b is drained at
	// its own stop, the pod's deletion.
	t.Run("shared-pid", func(t *testing.T) {
		script := func(c string) string {
			return kubeChild("child-"+c) + "trap \"exit 0\" TERM\necho > /out/ready-" + c + "\n" + loop
		}
		p := k.RunPod(t, kube.PodSpec{Name: "shared-pid", RuntimeClass: "graceful", Grace: 10, SharePID: true, RestartNever: true,
			Containers: []kube.Container{
				{Name: "a", Script: script("a"), Liveness: []string{"sh", "-c", "test ! -e /out/fail-a"}},
				{Name: "b", Script: script("b")},
			}})
		p.WaitFile(t, "ready-child-a")
		p.WaitFile(t, "ready-child-b")
		pause := p.SandboxPid(t)
		pauseAlive := holdAlive(t, "the pause process", pause)
		aInit, aChild := p.InitAndChild(t, "a")
		aDone := openPid(t, "a's child", aChild).Exited
		bInit, bChild := p.InitAndChild(t, "b")
		bInitAlive, bChildAlive := holdAlive(t, "b's init", bInit), holdAlive(t, "b's child", bChild)
		t.Logf("pause %d, a: init %d child %d, b: init %d child %d", pause, aInit, aChild, bInit, bChild)

		aID := p.ContainerID(t, "a")
		reports := k.Subscribe(t, "/graceful/stop")
		exits := k.Subscribe(t, "/tasks/exit")
		if err := os.WriteFile(filepath.Join(p.OutDir, "fail-a"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if st := exits.NextExit(t, aID, aInit); st != 0 {
			t.Errorf("a's init exited with %d, want 0 (it traps TERM)", st)
		}
		if r := reports.NextReportWithin(t, aID, 20*time.Second); r != nil {
			t.Logf("a's stop (liveness): order %s, drain %s", r.Order, kubeDrainSummary(r))
		}
		if !aDone() {
			t.Errorf("a's child %d is still alive after a's stop", aChild)
		}
		if got := p.Marker("child-a"); got != "clean" {
			t.Errorf("a's child was not drained (marker %q)", got)
		}
		pauseAlive()
		bInitAlive()
		bChildAlive()
		if got := p.Marker("child-b"); got != "" {
			t.Errorf("b's child got TERM at a's stop (marker %q)", got)
		}

		took := k.DeletePod(t, p)
		t.Logf("kubectl delete pod took %v", took.Round(time.Millisecond))
		if got := p.Marker("child-b"); got != "clean" {
			t.Errorf("b's child was not drained at its own stop (marker %q)", got)
		}
	})

	// lifecycle.stopSignal SIGINT (feature gate ContainerStopSignals): kubelet's stop sends SIGINT,
	// which containerd records for the container; the shim drains on it, with no annotation.
	t.Run("stop-signal-sigint", func(t *testing.T) {
		script := kubeChild("child") + `trap "echo int > /out/init; exit 0" INT
trap "exit 0" TERM
echo > /out/ready-app
` + loop
		p := k.RunPod(t, kube.PodSpec{Name: "stop-signal", RuntimeClass: "graceful", Grace: 10,
			Containers: []kube.Container{{Name: "app", Script: script, StopSignal: "SIGINT"}}})
		p.WaitFile(t, "ready-child")
		id := p.ContainerID(t, "app")
		reports := k.Subscribe(t, "/graceful/stop")
		took := k.DeletePod(t, p)
		t.Logf("kubectl delete pod took %v", took.Round(time.Millisecond))
		if got := p.Marker("init"); got != "int" {
			t.Errorf("init did not get SIGINT (marker %q)", got)
		}
		if got := p.Marker("child"); got != "clean" {
			t.Errorf("SIGINT did not drain the child (marker %q)", got)
		}
		if r := reports.NextReportWithin(t, id, 20*time.Second); r != nil {
			t.Logf("stop report: requested %s, order %s, drain %s", r.Requested, r.Order, kubeDrainSummary(r))
			if r.Requested != "SIGINT" {
				t.Errorf("kubelet's stop reached the shim as %s, want SIGINT", r.Requested)
			}
		}
	})

	// RuntimeClass graceful-init: container "reaper" runs a main process that never waits (exec
	// sleep) and leaves an orphan; when the orphan exits it is reaped, not left a zombie. Container
	// "main-exit": its main process exits 3 by itself while a helper runs; the helper is drained
	// (its TERM handler completes) and the container exits 3.
	t.Run("graceful-init", func(t *testing.T) {
		reaper := `sh -c '(while [ ! -e /out/orphan-go ]; do sleep 0.05; done) &'
echo > /out/ready-reaper
exec sleep 3600`
		mainExit := kubeChild("helper") + `echo > /out/ready-main
while [ ! -e /out/main-go ]; do sleep 0.05; done
exit 3`
		p := k.RunPod(t, kube.PodSpec{Name: "graceful-init", RuntimeClass: "graceful-init", Grace: 10, RestartNever: true,
			Containers: []kube.Container{{Name: "reaper", Script: reaper}, {Name: "main-exit", Script: mainExit}}})
		p.WaitFile(t, "ready-reaper")
		p.WaitFile(t, "ready-helper")

		// The orphan: the subshell whose parent exited, now a child of the container's PID 1.
		initPid := p.TaskPid(t, "reaper")
		orphan := 0
		for _, pid := range stack.Children(initPid, stack.Alive) {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if bytes.Contains(cmd, []byte("orphan-go")) && !bytes.Contains(cmd, []byte("ready-reaper")) {
				orphan = pid
			}
		}
		if orphan == 0 {
			t.Fatalf("no orphan among the children %v of the container's PID 1 %d", stack.Children(initPid, stack.Alive), initPid)
		}
		h, err := process.Open(orphan)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := os.WriteFile(filepath.Join(p.OutDir, "orphan-go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if !h.WaitExit(10 * time.Second) {
			t.Fatalf("the orphan %d did not exit in 10 s", orphan)
		}
		// A reaped process's /proc entry goes; a zombie's stays. PID 1 reaps on SIGCHLD.
		deadline := time.Now().Add(5 * time.Second)
		for stack.FileExists(fmt.Sprintf("/proc/%d", orphan)) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if st, err := process.ReadStatus(orphan); err == nil {
			t.Errorf("the exited orphan %d is not reaped 5 s later: state %c, parent %d", orphan, st.State, st.PPid)
		}

		id := p.ContainerID(t, "main-exit")
		mainInit := p.TaskPid(t, "main-exit")
		reports := k.Subscribe(t, "/graceful/stop")
		exits := k.Subscribe(t, "/tasks/exit")
		if err := os.WriteFile(filepath.Join(p.OutDir, "main-go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if st := exits.NextExit(t, id, mainInit); st != 3 {
			t.Errorf("container main-exit exited with %d, want the main process's 3", st)
		}
		if got := p.Marker("helper"); got != "clean" {
			t.Errorf("the helper was not drained when the main process exited (marker %q): it was zapped", got)
		}
		if r := reports.NextReportWithin(t, id, 20*time.Second); r != nil {
			t.Logf("main-exit report: order %s, drain %s", r.Order, kubeDrainSummary(r))
			if r.Order != "main-exit" {
				t.Errorf("report order %q, want main-exit", r.Order)
			}
		}
		k.DeletePod(t, p)
	})

	// Every pod deleted: the shims exit once their pod's sandbox is stopped.
	t.Run("nothing-left", func(t *testing.T) {
		deadline := time.Now().Add(10 * time.Second)
		for len(k.CRI.Shims()) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		for _, pid := range k.CRI.Shims() {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("shim left after every pod was deleted: %d %q", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
		}
		for _, pid := range kube.CgroupTreeProcs(k.CgroupRoot) {
			t.Errorf("process left in the pods' cgroups: %d", pid)
		}
	})
}

// kubeChild is a child that traps TERM: it writes /out/ready-<name> once it does, and on TERM
// takes 0.3 s, writes "clean" to /out/<name> and exits 0.
func kubeChild(name string) string {
	return `sh -c 'trap "sleep 0.3; echo clean > /out/` + name + `; exit 0" TERM; echo > /out/ready-` + name + `; ` + loop + `' &
`
}

// kubeIgnoringChild ignores TERM; it writes /out/ready-ignoring once it does.
const kubeIgnoringChild = `sh -c 'trap "" TERM; echo > /out/ready-ignoring; ` + loop + `' &
`

// kubeDrainSummary is a report's drain in one line: per process its outcome, signals and time.
func kubeDrainSummary(r *stack.StopReport) string {
	if r.Drain == nil {
		return "no drain"
	}
	var parts []string
	for _, p := range r.Drain.Processes {
		parts = append(parts, fmt.Sprintf("%d %s %v after %v", p.Pid, p.Outcome, p.Signals, time.Duration(p.After).Round(time.Millisecond)))
	}
	return fmt.Sprintf("grace %v, took %v: %s", time.Duration(r.Drain.Grace), time.Duration(r.Drain.Duration).Round(time.Millisecond), strings.Join(parts, "; "))
}
