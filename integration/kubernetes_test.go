package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"

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
	if os.Getenv("GRACEFUL_KUBERNETES") != "1" {
		t.Skip("set GRACEFUL_KUBERNETES=1 (make test-kubernetes) to run a kubelet")
	}
	k := startKubernetes(t)

	// runtimeClassName graceful, terminationGracePeriodSeconds 10, a run.sh init (no TERM trap: as
	// PID 1 it drops kubelet's SIGTERM) and a child whose TERM handler needs 0.3 s. kubectl delete
	// pod: the child's handler runs to the end and the pod is gone well before the 10 s.
	t.Run("term-handler", func(t *testing.T) {
		p := k.runPod(t, kubePodSpec{name: "term-handler", runtimeClass: "graceful", grace: 10,
			containers: []kubeContainer{{name: "app", script: kubeChild("child") + "echo > /out/ready-app\nwait"}}})
		p.waitFile(t, "ready-child")
		id := p.containerID(t, "app")
		reports := k.subscribe(t, "/graceful/stop")
		took := k.deletePod(t, p)
		t.Logf("kubectl delete pod took %v (terminationGracePeriodSeconds 10)", took.Round(time.Millisecond))
		if got := p.marker("child"); got != "clean" {
			t.Errorf("the child's TERM handler did not complete (marker %q): it was SIGKILLed", got)
		}
		if took >= 7*time.Second {
			t.Errorf("kubectl delete pod took %v, want well below the 10 s grace (the child needs 0.3 s)", took)
		}
		if r := reports.report(t, id); r != nil {
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
		p := k.runPod(t, kubePodSpec{name: "grace-cut", runtimeClass: "graceful", grace: 3,
			annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "20s"},
			containers:  []kubeContainer{{name: "app", script: kubeIgnoringChild + "trap \"exit 0\" TERM\necho > /out/ready-app\n" + loop}}})
		p.waitFile(t, "ready-ignoring")
		id := p.containerID(t, "app")
		init, child := p.initAndChild(t, "app")
		childDone := holdExit(t, "the TERM-ignoring child", child)
		reports := k.subscribe(t, "/graceful/stop")
		exits := k.subscribe(t, "/tasks/exit")
		took := k.deletePod(t, p)
		t.Logf("kubectl delete pod took %v (terminationGracePeriodSeconds 3)", took.Round(time.Millisecond))
		if !childDone() {
			t.Errorf("the TERM-ignoring child %d is still alive", child)
		}
		if st := exits.exit(t, id, init); st != 0 {
			t.Errorf("init exited with %d, want 0: the shim's drain did not end before kubelet's SIGKILL", st)
		}
		r := reports.report(t, id)
		if r == nil {
			return
		}
		t.Logf("stop report: order %s, notes %v, drain %s", r.Order, r.Notes, kubeDrainSummary(r))
		if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "grace period cut to") }) {
			t.Errorf("the report does not note the grace cut: notes %v", r.Notes)
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
		p := k.runPod(t, kubePodSpec{name: "shared-pid", runtimeClass: "graceful", grace: 10, sharePID: true, restartNever: true,
			containers: []kubeContainer{
				{name: "a", script: script("a"), liveness: []string{"sh", "-c", "test ! -e /out/fail-a"}},
				{name: "b", script: script("b")},
			}})
		p.waitFile(t, "ready-child-a")
		p.waitFile(t, "ready-child-b")
		pause := p.sandboxPid(t)
		pauseAlive := holdAlive(t, "the pause process", pause)
		aInit, aChild := p.initAndChild(t, "a")
		aDone := holdExit(t, "a's child", aChild)
		bInit, bChild := p.initAndChild(t, "b")
		bInitAlive, bChildAlive := holdAlive(t, "b's init", bInit), holdAlive(t, "b's child", bChild)
		t.Logf("pause %d, a: init %d child %d, b: init %d child %d", pause, aInit, aChild, bInit, bChild)

		aID := p.containerID(t, "a")
		reports := k.subscribe(t, "/graceful/stop")
		exits := k.subscribe(t, "/tasks/exit")
		if err := os.WriteFile(filepath.Join(p.out, "fail-a"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if st := exits.exit(t, aID, aInit); st != 0 {
			t.Errorf("a's init exited with %d, want 0 (it traps TERM)", st)
		}
		if r := reports.report(t, aID); r != nil {
			t.Logf("a's stop (liveness): order %s, drain %s", r.Order, kubeDrainSummary(r))
		}
		if !aDone() {
			t.Errorf("a's child %d is still alive after a's stop", aChild)
		}
		if got := p.marker("child-a"); got != "clean" {
			t.Errorf("a's child was not drained (marker %q)", got)
		}
		pauseAlive()
		bInitAlive()
		bChildAlive()
		if got := p.marker("child-b"); got != "" {
			t.Errorf("b's child got TERM at a's stop (marker %q)", got)
		}

		took := k.deletePod(t, p)
		t.Logf("kubectl delete pod took %v", took.Round(time.Millisecond))
		if got := p.marker("child-b"); got != "clean" {
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
		p := k.runPod(t, kubePodSpec{name: "stop-signal", runtimeClass: "graceful", grace: 10,
			containers: []kubeContainer{{name: "app", script: script, stopSignal: "SIGINT"}}})
		p.waitFile(t, "ready-child")
		id := p.containerID(t, "app")
		reports := k.subscribe(t, "/graceful/stop")
		took := k.deletePod(t, p)
		t.Logf("kubectl delete pod took %v", took.Round(time.Millisecond))
		if got := p.marker("init"); got != "int" {
			t.Errorf("init did not get SIGINT (marker %q)", got)
		}
		if got := p.marker("child"); got != "clean" {
			t.Errorf("SIGINT did not drain the child (marker %q)", got)
		}
		if r := reports.report(t, id); r != nil {
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
		p := k.runPod(t, kubePodSpec{name: "graceful-init", runtimeClass: "graceful-init", grace: 10, restartNever: true,
			containers: []kubeContainer{{name: "reaper", script: reaper}, {name: "main-exit", script: mainExit}}})
		p.waitFile(t, "ready-reaper")
		p.waitFile(t, "ready-helper")

		// The orphan: the subshell whose parent exited, now a child of the container's PID 1.
		initPid := p.taskPid(t, "reaper")
		orphan := 0
		for _, pid := range childrenOf(initPid) {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if bytes.Contains(cmd, []byte("orphan-go")) && !bytes.Contains(cmd, []byte("ready-reaper")) {
				orphan = pid
			}
		}
		if orphan == 0 {
			t.Fatalf("no orphan among the children %v of the container's PID 1 %d", childrenOf(initPid), initPid)
		}
		h, err := process.Open(orphan)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := os.WriteFile(filepath.Join(p.out, "orphan-go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if n, err := unix.Poll([]unix.PollFd{{Fd: int32(h.Fd()), Events: unix.POLLIN}}, 10000); n != 1 {
			t.Fatalf("the orphan %d did not exit in 10 s (poll %d, %v)", orphan, n, err)
		}
		// A reaped process's /proc entry goes; a zombie's stays. PID 1 reaps on SIGCHLD.
		deadline := time.Now().Add(5 * time.Second)
		for fileExists(fmt.Sprintf("/proc/%d", orphan)) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if st, err := process.ReadStatus(orphan); err == nil {
			t.Errorf("the exited orphan %d is not reaped 5 s later: state %c, parent %d", orphan, st.State, st.PPid)
		}

		id := p.containerID(t, "main-exit")
		mainInit := p.taskPid(t, "main-exit")
		reports := k.subscribe(t, "/graceful/stop")
		exits := k.subscribe(t, "/tasks/exit")
		if err := os.WriteFile(filepath.Join(p.out, "main-go"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if st := exits.exit(t, id, mainInit); st != 3 {
			t.Errorf("container main-exit exited with %d, want the main process's 3", st)
		}
		if got := p.marker("helper"); got != "clean" {
			t.Errorf("the helper was not drained when the main process exited (marker %q): it was zapped", got)
		}
		if r := reports.report(t, id); r != nil {
			t.Logf("main-exit report: order %s, drain %s", r.Order, kubeDrainSummary(r))
			if r.Order != "main-exit" {
				t.Errorf("report order %q, want main-exit", r.Order)
			}
		}
		k.deletePod(t, p)
	})

	// Every pod deleted: the shims exit once their pod's sandbox is stopped.
	t.Run("nothing-left", func(t *testing.T) {
		deadline := time.Now().Add(10 * time.Second)
		for len(k.cri.shims()) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		for _, pid := range k.cri.shims() {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("shim left after every pod was deleted: %d %q", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
		}
		for _, pid := range cgroupTreeProcs(k.cgroupRoot) {
			t.Errorf("process left in the pods' cgroups: %d", pid)
		}
	})
}

// Versions of the cluster's binaries (install-kubernetes.sh builds them into the stack cache).
const (
	kubernetesDefaultVersion = "v1.37.2"
	etcdDefaultVersion       = "v3.7.3"
	kubeNode                 = "graceful-node"
	// kubeNodeIP is a TEST-NET-2 address that exists only on a veth in the private namespace.
	kubeNodeIP = "198.51.100.10"
	// Paths in contrib/containerd-config.toml that the test rewrites.
	kubeContribConfigPath = "/etc/containerd/graceful.toml"
	kubeContribShimPath   = "/usr/local/bin/containerd-shim-graceful-v2"
)

func kubernetesVersion() string {
	if v := os.Getenv("KUBERNETES_VERSION"); v != "" {
		return v
	}
	return kubernetesDefaultVersion
}

func etcdVersion() string {
	if v := os.Getenv("ETCD_VERSION"); v != "" {
		return v
	}
	return etcdDefaultVersion
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

// kubeCluster is the running cluster.
type kubeCluster struct {
	cri        *criEnv
	dir        string // certificates, configs, logs, the kubelet's root, the pods' /out
	bin        map[string]string
	holder     *exec.Cmd // holds the private mount and network namespace
	daemons    []*kubeDaemon
	cgroupRoot string // the kubelet's cgroupRoot
	seq        int
}

// kubeDaemon is etcd, the apiserver or the kubelet, in the private namespace.
type kubeDaemon struct {
	name   string
	cmd    *exec.Cmd
	exited chan error
}

// startKubernetes starts the CRI containerd with contrib's handlers, the private namespace,
// etcd, the apiserver and the kubelet, and applies contrib/runtimeclass.yaml; cleanup stops
// everything and checks that nothing is left on the host.
func startKubernetes(t *testing.T) *kubeCluster {
	t.Helper()
	k := &kubeCluster{bin: map[string]string{}}
	for _, b := range []string{"kubelet", "kube-apiserver", "kubectl", "etcd"} {
		v := kubernetesVersion()
		if b == "etcd" {
			v = etcdVersion()
		}
		k.bin[b] = filepath.Join(stack.StackDir(), "bin", b+"-"+v)
		if _, err := os.Stat(k.bin[b]); err != nil {
			t.Fatalf("%s is not installed (bash integration/stack/install-kubernetes.sh): %v", b, err)
		}
	}
	hostBefore := kubeHostState()

	config, err := kubeContainerdConfig(filepath.Join(stack.ModuleRoot(), "contrib", "containerd-config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	k.cri = startCRIWith(t, criSetup{noHandlers: true, extraConfig: config})

	// Outside /run, /var/lib and /var/log, which the private namespace covers.
	if k.dir, err = os.MkdirTemp("", "graceful-kube-"); err != nil {
		t.Fatal(err)
	}
	k.cgroupRoot = "/" + filepath.Base(k.dir)
	t.Cleanup(func() { k.close(t, hostBefore) })
	for _, d := range []string{"pki", "logs", "varlib/kubelet", "varlog/pods", "sysctl", "out", "etcd"} {
		if err := os.MkdirAll(filepath.Join(k.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeKubePKI(filepath.Join(k.dir, "pki")); err != nil {
		t.Fatal(err)
	}
	if err := k.writeConfigs(); err != nil {
		t.Fatal(err)
	}
	if err := makeCgroupRoot(k.cgroupRoot); err != nil {
		t.Fatal(err)
	}
	if err := k.startNamespace(); err != nil {
		t.Fatal(err)
	}

	pki := filepath.Join(k.dir, "pki")
	k.startDaemon(t, "etcd", "--name", "graceful", "--data-dir", filepath.Join(k.dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "graceful=http://127.0.0.1:2380")
	k.startDaemon(t, "kube-apiserver", "--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0",
		"--secure-port=6443", "--advertise-address="+kubeNodeIP,
		"--tls-cert-file="+pki+"/apiserver.crt", "--tls-private-key-file="+pki+"/apiserver.key",
		"--client-ca-file="+pki+"/ca.crt", "--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+pki+"/sa.pub", "--service-account-signing-key-file="+pki+"/sa.key",
		"--service-cluster-ip-range=10.96.0.0/24", "--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
		"--kubelet-client-certificate="+pki+"/apiserver-kubelet-client.crt",
		"--kubelet-client-key="+pki+"/apiserver-kubelet-client.key",
		"--cert-dir="+filepath.Join(k.dir, "apiserver-certs"), "--profiling=false",
		"--feature-gates=ContainerStopSignals=true")
	// The apiserver has no readiness notification: ask until it answers.
	k.waitFor(t, "the apiserver", 120*time.Second, func() error {
		_, err := k.kubectl(nil, "get", "--raw", "/readyz")
		return err
	})
	k.startDaemon(t, "kubelet", "--config", filepath.Join(k.dir, "kubelet-config.yaml"),
		"--kubeconfig", filepath.Join(pki, "kubelet.kubeconfig"), "--root-dir", filepath.Join(k.dir, "varlib", "kubelet"),
		"--hostname-override", kubeNode, "--node-ip", kubeNodeIP, "--v=2")
	if out, err := k.kubectl(nil, "wait", "--for=create", "node/"+kubeNode, "--timeout=120s"); err != nil {
		t.Fatalf("the kubelet did not register its node: %v\n%s\n%s", err, out, k.log("kubelet"))
	}

	if out, err := k.kubectl([]byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n"), "apply", "-f", "-"); err != nil {
		t.Fatalf("create the default service account (no controller-manager): %v\n%s", err, out)
	}
	// contrib/runtimeclass.yaml as written: both RuntimeClasses and its example pod, which names
	// no node and stays Pending here (no scheduler); it is deleted again.
	contribRC := filepath.Join(stack.ModuleRoot(), "contrib", "runtimeclass.yaml")
	if out, err := k.kubectl(nil, "apply", "-f", contribRC); err != nil {
		t.Fatalf("kubectl apply -f contrib/runtimeclass.yaml: %v\n%s", err, out)
	}
	if out, err := k.kubectl(nil, "delete", "pod", "worker", "--wait=true", "--timeout=60s"); err != nil {
		t.Fatalf("delete contrib's example pod: %v\n%s", err, out)
	}
	out, _ := k.kubectl(nil, "version")
	t.Logf("cluster ready after %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	return k
}

// kubeContainerdConfig is contrib/containerd-config.toml for the CRI daemon: its version line
// dropped (the stack's config has one), the options file and the runtime_path pointed at the
// test's.
func kubeContainerdConfig(contrib string) (string, error) {
	data, err := os.ReadFile(contrib)
	if err != nil {
		return "", err
	}
	config := string(data)
	rewrites := []string{
		"ConfigPath = '" + kubeContribConfigPath + "'", "ConfigPath = '@CONFIG@'",
		"runtime_path = '" + kubeContribShimPath + "'", "runtime_path = '@SHIM@'",
		"\nversion = 3\n", "\n",
	}
	for i := 0; i < len(rewrites); i += 2 {
		if !strings.Contains(config, rewrites[i]) {
			return "", fmt.Errorf("%s does not contain %q, which the test rewrites", contrib, rewrites[i])
		}
	}
	return strings.NewReplacer(rewrites...).Replace(config), nil
}

// writeConfigs writes the kubelet's configuration, its resolv.conf, the kubeconfigs and the fake
// sysctl files that the kubelet checks and would otherwise write on the host.
func (k *kubeCluster) writeConfigs() error {
	pki := filepath.Join(k.dir, "pki")
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
podLogsDir: %[3]s
resolvConf: %[4]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[5]s/ca.crt}
authorization: {mode: Webhook}
evictionHard: {memory.available: 50Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
rotateCertificates: false
serverTLSBootstrap: false
featureGates:
  ContainerStopSignals: true
`, k.cgroupRoot, k.cri.s.Address, filepath.Join(k.dir, "varlog", "pods"), filepath.Join(k.dir, "resolv.conf"), pki)
	files := map[string]string{
		"kubelet-config.yaml": kubelet,
		"resolv.conf":         "nameserver 127.0.0.1\n",
		// Values the kubelet insists on (it would otherwise write them).
		"sysctl/vm.overcommit_memory":      "1\n",
		"sysctl/vm.panic_on_oom":           "0\n",
		"sysctl/kernel.panic":              "10\n",
		"sysctl/kernel.panic_on_oops":      "1\n",
		"sysctl/kernel.keys.root_maxkeys":  "1000000\n",
		"sysctl/kernel.keys.root_maxbytes": "25000000\n",
		"pki/admin.kubeconfig":             kubeconfig(pki, "admin"),
		"pki/kubelet.kubeconfig":           kubeconfig(pki, "kubelet"),
	}
	for name, content := range files {
		p := filepath.Join(k.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

func kubeconfig(pki, user string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: k, cluster: {server: "https://127.0.0.1:6443", certificate-authority: %[1]s/ca.crt}}]
users: [{name: u, user: {client-certificate: %[1]s/%[2]s.crt, client-key: %[1]s/%[2]s.key}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
current-context: c
`, pki, user)
}

// writeKubePKI writes a CA, the apiserver's serving certificate, the client certificates of the
// admin, the kubelet and the apiserver (towards the kubelet), and the service-account key pair.
func writeKubePKI(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "graceful-ca"},
		NotBefore: now, NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	write := func(name, kind string, der []byte) error {
		return os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
	}
	writeKey := func(name string, key *ecdsa.PrivateKey) error {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		return write(name, "EC PRIVATE KEY", der)
	}
	if err := write("ca.crt", "CERTIFICATE", caDER); err != nil {
		return err
	}
	certs := []struct {
		name    string
		subject pkix.Name
		server  bool
	}{
		{"apiserver", pkix.Name{CommonName: "kube-apiserver"}, true},
		{"admin", pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, false},
		{"kubelet", pkix.Name{CommonName: "system:node:" + kubeNode, Organization: []string{"system:nodes"}}, false},
		{"apiserver-kubelet-client", pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, false},
	}
	for i, c := range certs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: c.subject,
			NotBefore: now, NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if c.server {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
			tmpl.DNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(kubeNodeIP), net.ParseIP("10.96.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("%s certificate: %w", c.name, err)
		}
		if err := write(c.name+".crt", "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writeKey(c.name+".key", key); err != nil {
			return err
		}
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	if err := writeKey("sa.key", sa); err != nil {
		return err
	}
	return write("sa.pub", "PUBLIC KEY", pub)
}

// startNamespace starts the process that holds the private mount and network namespace: /run a
// tmpfs (with the CRI daemon's directory, for its socket, moved in), /var/lib and /var/log
// bound from the test's directory, fake sysctl files bound over /proc/sys, loopback and a veth
// with the node IP.
func (k *kubeCluster) startNamespace() error {
	script := fmt.Sprintf(`set -e
mkdir -p %[1]s/keep
mount --bind %[2]s %[1]s/keep
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p %[2]s
mount --move %[1]s/keep %[2]s
mount --bind %[1]s/varlib /var/lib
mount --bind %[1]s/varlog /var/log
for f in %[1]s/sysctl/*; do mount --bind "$f" /proc/sys/$(basename "$f" | tr . /); done
ip link set lo up
ip link add graceful0 type veth peer name graceful0p
ip link set graceful0 up
ip link set graceful0p up
ip addr add %[3]s/24 dev graceful0
ip route add default dev graceful0
echo ready
exec sleep infinity
`, k.dir, k.cri.s.Dir, kubeNodeIP)
	k.holder = exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script)
	k.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	k.holder.Stderr = &stderr
	stdout, err := k.holder.StdoutPipe()
	if err != nil {
		return err
	}
	if err := k.holder.Start(); err != nil {
		return fmt.Errorf("start the namespace holder: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		k.holder.Process.Kill()
		k.holder.Wait()
		k.holder = nil
		return fmt.Errorf("set up the private namespace: %q %v\n%s", line, err, stderr.String())
	}
	return nil
}

// startDaemon starts a cluster binary in the private namespace, logging to logs/<name>.log.
func (k *kubeCluster) startDaemon(t *testing.T, name string, args ...string) {
	t.Helper()
	logFile, err := os.Create(filepath.Join(k.dir, "logs", name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	d := &kubeDaemon{name: name, exited: make(chan error, 1)}
	d.cmd = exec.Command("nsenter", append([]string{"-t", strconv.Itoa(k.holder.Process.Pid), "-m", "-n", "--", "nice", k.bin[name]}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	k.daemons = append(k.daemons, d)
}

// waitFor retries check until it succeeds, a daemon exits or the timeout passes.
func (k *kubeCluster) waitFor(t *testing.T, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		for _, d := range k.daemons {
			select {
			case e := <-d.exited:
				d.exited <- e
				t.Fatalf("%s exited (%v) while waiting for %s:\n%s", d.name, e, what, k.log(d.name))
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// log returns the tail of a daemon's log.
func (k *kubeCluster) log(name string) string {
	data, _ := os.ReadFile(filepath.Join(k.dir, "logs", name+".log"))
	if len(data) > 8000 {
		data = data[len(data)-8000:]
	}
	return string(data)
}

// kubectl runs kubectl as the admin in the private network namespace, with stdin when not nil.
func (k *kubeCluster) kubectl(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(k.holder.Process.Pid), "-n", "--",
		k.bin["kubectl"], "--kubeconfig", filepath.Join(k.dir, "pki", "admin.kubeconfig")}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// close deletes what pods are left, stops the kubelet, the apiserver and etcd, ends the private
// namespace and checks that nothing is left: no process in the namespace, no cgroup, no mount,
// and the host's /var/lib/kubelet, /var/log/pods, sysctls and iptables as they were.
func (k *kubeCluster) close(t *testing.T, hostBefore string) {
	if t.Failed() {
		for _, name := range []string{"kubelet", "kube-apiserver"} {
			p := filepath.Join(os.TempDir(), "graceful-"+name+".log")
			if data, err := os.ReadFile(filepath.Join(k.dir, "logs", name+".log")); err == nil && os.WriteFile(p, data, 0o644) == nil {
				t.Logf("%s log saved to %s", name, p)
			}
		}
	}
	if k.holder != nil && len(k.daemons) == 3 {
		if out, err := k.kubectl(nil, "delete", "pods", "--all", "--wait=true", "--timeout=60s"); err != nil {
			t.Errorf("delete the pods left: %v\n%s", err, out)
		}
	}
	// The apiserver before etcd: without etcd it hangs for minutes.
	for i := len(k.daemons) - 1; i >= 0; i-- {
		d := k.daemons[i]
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not exit on SIGTERM", d.name)
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	if k.holder != nil {
		netns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", k.holder.Process.Pid))
		k.holder.Process.Kill()
		k.holder.Wait()
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			if ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net")); err == nil && ns == netns {
				cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				t.Errorf("process left in the private namespace: %s %q", e.Name(), bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
				if pid, err := strconv.Atoi(e.Name()); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	for _, m := range mountsUnder(k.dir) {
		t.Errorf("mount left on the host: %s", m)
	}
	for _, d := range removeCgroupTree(k.cgroupRoot) {
		t.Errorf("cgroup left: %s", d)
	}
	if after := kubeHostState(); after != hostBefore {
		t.Errorf("the host changed:\nbefore:\n%s\nafter:\n%s", hostBefore, after)
	}
	os.RemoveAll(k.dir)
}

// kubeHostState is what the kubelet must not change on the host: whether /var/lib/kubelet and
// /var/log/pods exist, the sysctls it sets, and the host's KUBE iptables chains.
func kubeHostState() string {
	var b strings.Builder
	for _, p := range []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers"} {
		fmt.Fprintf(&b, "%s exists: %v\n", p, fileExists(p))
	}
	for _, s := range []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"} {
		data, _ := os.ReadFile("/proc/sys/" + s)
		fmt.Fprintf(&b, "%s = %s\n", s, strings.TrimSpace(string(data)))
	}
	out, _ := exec.Command("iptables-save").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "KUBE") {
			fmt.Fprintln(&b, line)
		}
	}
	return b.String()
}

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 controllers, named, unified).
func cgroupMounts() []string {
	data, _ := os.ReadFile("/proc/self/mounts")
	var dirs []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			dirs = append(dirs, f[1])
		}
	}
	return dirs
}

// makeCgroupRoot creates the kubelet's cgroupRoot in every hierarchy (v1 cpuset needs its cpus and
// mems before a task can join).
func makeCgroupRoot(root string) error {
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if data, err := os.ReadFile(filepath.Join(m, f)); err == nil && !stack.Cgroup2() {
				if err := os.WriteFile(filepath.Join(d, f), data, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

// cgroupTreeProcs lists the processes in root's cgroup tree, in any hierarchy.
func cgroupTreeProcs(root string) []int {
	var pids []int
	for _, m := range cgroupMounts() {
		filepath.Walk(filepath.Join(m, root), func(p string, info os.FileInfo, err error) error {
			if err != nil || info.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupTree removes root's cgroup tree, deepest first, in every hierarchy, and returns the
// cgroups it could not remove.
func removeCgroupTree(root string) []string {
	var left []string
	for _, m := range cgroupMounts() {
		var dirs []string
		filepath.Walk(filepath.Join(m, root), func(p string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil {
				left = append(left, dirs[i])
			}
		}
	}
	return left
}

// kubeContainer is a container of a test pod: busybox running script (sh -c), /out mounted.
type kubeContainer struct {
	name, script string
	stopSignal   string   // lifecycle.stopSignal
	liveness     []string // an exec liveness probe, every second
}

// kubePodSpec is a test pod.
type kubePodSpec struct {
	name, runtimeClass string
	grace              int
	sharePID           bool
	restartNever       bool
	annotations        map[string]string
	containers         []kubeContainer
}

// kubePod is a pod that runPod saw Ready.
type kubePod struct {
	k    *kubeCluster
	name string
	out  string // the host directory mounted at /out (hostPath)
	uid  string
}

// runPod applies the pod (on the node, hostNetwork) with kubectl and waits until it is Ready.
func (k *kubeCluster) runPod(t *testing.T, spec kubePodSpec) *kubePod {
	t.Helper()
	k.seq++
	p := &kubePod{k: k, name: fmt.Sprintf("%s-%d", spec.name, k.seq), out: filepath.Join(k.dir, "out", fmt.Sprintf("%s-%d", spec.name, k.seq))}
	if err := os.MkdirAll(p.out, 0o777); err != nil {
		t.Fatal(err)
	}
	var containers []map[string]any
	for _, c := range spec.containers {
		cm := map[string]any{
			"name": c.name, "image": stack.ImageName, "imagePullPolicy": "Never",
			"command":      []string{"sh", "-c", c.script},
			"volumeMounts": []map[string]any{{"name": "out", "mountPath": "/out"}},
		}
		if c.stopSignal != "" {
			cm["lifecycle"] = map[string]any{"stopSignal": c.stopSignal}
		}
		if c.liveness != nil {
			cm["livenessProbe"] = map[string]any{"exec": map[string]any{"command": c.liveness},
				"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 5}
		}
		containers = append(containers, cm)
	}
	podSpec := map[string]any{
		"nodeName": kubeNode, "hostNetwork": true, "dnsPolicy": "Default",
		"automountServiceAccountToken": false, "enableServiceLinks": false,
		"runtimeClassName": spec.runtimeClass, "terminationGracePeriodSeconds": spec.grace,
		"shareProcessNamespace": spec.sharePID, "os": map[string]any{"name": "linux"},
		"containers": containers,
		"volumes":    []map[string]any{{"name": "out", "hostPath": map[string]any{"path": p.out, "type": "Directory"}}},
	}
	if spec.restartNever {
		podSpec["restartPolicy"] = "Never"
	}
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.name, "namespace": "default"},
		"spec":     podSpec}
	if spec.annotations != nil {
		pod["metadata"].(map[string]any)["annotations"] = spec.annotations
	}
	manifest, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := k.kubectl(nil, "get", "pod", p.name); err == nil {
			k.kubectl(nil, "delete", "pod", p.name, "--wait=true", "--timeout=60s")
		}
	})
	if out, err := k.kubectl(manifest, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply pod %s: %v\n%s", p.name, err, out)
	}
	if out, err := k.kubectl(nil, "wait", "--for=condition=Ready", "pod/"+p.name, "--timeout=120s"); err != nil {
		desc, _ := k.kubectl(nil, "describe", "pod", p.name)
		t.Fatalf("pod %s not Ready: %v\n%s\n%s", p.name, err, out, desc)
	}
	uid, err := k.kubectl(nil, "get", "pod", p.name, "-o", "jsonpath={.metadata.uid}")
	if err != nil {
		t.Fatal(err)
	}
	p.uid = strings.TrimSpace(uid)
	return p
}

// deletePod runs kubectl delete pod and returns how long it took until the pod was gone.
func (k *kubeCluster) deletePod(t *testing.T, p *kubePod) time.Duration {
	t.Helper()
	start := time.Now()
	if out, err := k.kubectl(nil, "delete", "pod", p.name, "--wait=true", "--timeout=120s"); err != nil {
		t.Fatalf("kubectl delete pod %s: %v\n%s", p.name, err, out)
	}
	return time.Since(start)
}

// waitFile waits until the pod wrote /out/name (a container has no way to tell the host).
func (p *kubePod) waitFile(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !fileExists(filepath.Join(p.out, name)) {
		if time.Now().After(deadline) {
			desc, _ := p.k.kubectl(nil, "describe", "pod", p.name)
			t.Fatalf("pod %s did not write /out/%s in 30s:\n%s", p.name, name, desc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// marker returns the content of /out/name, or "" when the pod did not write it.
func (p *kubePod) marker(name string) string {
	data, err := os.ReadFile(filepath.Join(p.out, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// criContainers are the pod's containerd containers (CRI's labels), by container name; the
// sandbox is "".
func (p *kubePod) criContainers(t *testing.T) map[string]string {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), stack.CRINamespace)
	cs, err := p.k.cri.s.Client.Containers(ctx, `labels."io.kubernetes.pod.uid"==`+strconv.Quote(p.uid))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		name := labels["io.kubernetes.container.name"]
		if labels["io.cri-containerd.kind"] == "sandbox" {
			name = ""
		}
		ids[name] = c.ID()
	}
	return ids
}

// containerID is the containerd id of the pod's container name.
func (p *kubePod) containerID(t *testing.T, name string) string {
	t.Helper()
	id, ok := p.criContainers(t)[name]
	if !ok {
		t.Fatalf("pod %s has no container %s", p.name, name)
	}
	return id
}

// taskPid is the host pid of the init of the pod's container name ("" for the sandbox).
func (p *kubePod) taskPid(t *testing.T, name string) int {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), stack.CRINamespace)
	id, ok := p.criContainers(t)[name]
	if !ok {
		t.Fatalf("pod %s has no container %q", p.name, name)
	}
	c, err := p.k.cri.s.Client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task of %s: %v", name, err)
	}
	return int(task.Pid())
}

// sandboxPid is the host pid of the pod's pause process.
func (p *kubePod) sandboxPid(t *testing.T) int {
	t.Helper()
	return p.taskPid(t, "")
}

// initAndChild returns the host pids of a container's init and of its one child.
func (p *kubePod) initAndChild(t *testing.T, name string) (init, child int) {
	t.Helper()
	init = p.taskPid(t, name)
	var shells []int // not the sleeps of init's loop
	for _, pid := range childrenOf(init) {
		if st, err := process.ReadStatus(pid); err == nil && st.Name == "sh" {
			shells = append(shells, pid)
		}
	}
	if len(shells) != 1 {
		t.Fatalf("container %s: init %d has the shell children %v, want one", name, init, shells)
	}
	return init, shells[0]
}

// childrenOf lists the children of pid.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var children []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := process.ReadStatus(n); err == nil && st.PPid == pid && st.State != 'Z' {
			children = append(children, n)
		}
	}
	return children
}

// holdExit opens a pidfd on pid at once and returns a check whether that process has exited.
func holdExit(t *testing.T, what string, pid int) func() bool {
	t.Helper()
	h, err := process.Open(pid)
	if err != nil {
		t.Fatalf("pidfd of %s %d: %v", what, pid, err)
	}
	t.Cleanup(func() { h.Close() })
	return func() bool { return h.Exited() }
}

// kubeEvents is a subscription to one topic of the CRI daemon's events, for 60 s at most.
type kubeEvents struct {
	reportStream
}

func (k *kubeCluster) subscribe(t *testing.T, topic string) *kubeEvents {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	evs, errs := k.cri.s.Client.Subscribe(ctx, `topic==`+strconv.Quote(topic)+`,namespace=="`+stack.CRINamespace+`"`)
	return &kubeEvents{reportStream{ctx: ctx, events: evs, errs: errs}}
}

// report returns the stop report of container id, or fails the test and returns nil when none
// comes within 20 s.
func (e *kubeEvents) report(t *testing.T, id string) *stack.StopReport {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case env := <-e.events:
			r, err := stack.DecodeStopReport(env.Event)
			if err != nil {
				t.Fatal(err)
			}
			if r.ContainerID == id {
				return r
			}
		case err := <-e.errs:
			t.Fatalf("event stream: %v", err)
		case <-timeout:
			t.Errorf("no stop report published for %s in 20 s", id)
			return nil
		}
	}
}

// exit returns the exit status of the task of container id whose pid is pid.
func (e *kubeEvents) exit(t *testing.T, id string, pid int) uint32 {
	t.Helper()
	for {
		select {
		case env := <-e.events:
			ev, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				t.Fatal(err)
			}
			if x, ok := ev.(*apievents.TaskExit); ok && x.ContainerID == id && int(x.Pid) == pid {
				return x.ExitStatus
			}
		case err := <-e.errs:
			t.Fatalf("event stream: %v", err)
		case <-e.ctx.Done():
			t.Fatalf("no exit of %s (pid %d) published", id, pid)
		}
	}
}

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

// shims lists this CRI daemon's shim processes.
func (env *criEnv) shims() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("containerd-shim")) || !bytes.Contains(cmdline, []byte(env.s.Dir)) {
			continue
		}
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
