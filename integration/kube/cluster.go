// Package kube runs a single-node Kubernetes cluster for the tests — etcd, kube-apiserver and a
// kubelet, built by install-kubernetes.sh — on a private CRI containerd configured with
// contrib/containerd-config.toml (paths rewritten), and drives pods with kubectl: pods name their
// node, so no scheduler is needed. etcd, the apiserver and the kubelet run in a private mount and
// network namespace, so that the kubelet's sysctls, iptables chains, /var/lib/kubelet and
// /var/log/pods never touch the host; containerd and its shims run in the host's namespaces, as on
// a node.
package kube

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

	"github.com/graceful-shim/graceful/integration/cri"
	"github.com/graceful-shim/graceful/integration/stack"
)

// Versions of the cluster's binaries (install-kubernetes.sh builds them into the stack cache).
const (
	kubernetesDefaultVersion = "v1.37.2"
	etcdDefaultVersion       = "v3.7.3"
	node                     = "graceful-node"
	// nodeIP is a TEST-NET-2 address that exists only on a veth in the private namespace.
	nodeIP = "198.51.100.10"
	// Paths in contrib/containerd-config.toml that the test rewrites.
	contribConfigPath = "/etc/containerd/graceful.toml"
	contribShimPath   = "/usr/local/bin/containerd-shim-graceful-v2"
)

// Cluster is the running cluster.
type Cluster struct {
	CRI *cri.Env
	// Dir holds the certificates, configs, logs, the kubelet's root and the pods' /out.
	Dir string
	// CgroupRoot is the kubelet's cgroupRoot, below which every pod's cgroups are.
	CgroupRoot string
	bin        map[string]string
	holder     *exec.Cmd // holds the private mount and network namespace
	daemons    []*stack.Daemon
	seq        int
}

// Start starts the CRI containerd with contrib's handlers, the private namespace, etcd, the
// apiserver and the kubelet, and applies contrib/runtimeclass.yaml; cleanup stops everything and
// checks that nothing is left on the host.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	k := &Cluster{bin: map[string]string{}}
	for _, b := range []string{"kubelet", "kube-apiserver", "kubectl", "etcd"} {
		v := stack.ToolVersion("KUBERNETES_VERSION", kubernetesDefaultVersion)
		if b == "etcd" {
			v = stack.ToolVersion("ETCD_VERSION", etcdDefaultVersion)
		}
		k.bin[b] = stack.Tool(tb, b, v, "install-kubernetes.sh")
	}
	hostBefore := hostState()

	config, err := containerdConfig(filepath.Join(stack.ModuleRoot(), "contrib", "containerd-config.toml"))
	if err != nil {
		tb.Fatalf("contrib's containerd config: %v", err)
	}
	start := time.Now()
	k.CRI = cri.Start(tb, cri.Setup{NoHandlers: true, ExtraConfig: config})

	// Outside /run, /var/lib and /var/log, which the private namespace covers.
	if k.Dir, err = os.MkdirTemp("", "graceful-kube-"); err != nil {
		tb.Fatal(err)
	}
	k.CgroupRoot = "/" + filepath.Base(k.Dir)
	tb.Cleanup(func() { k.close(tb, hostBefore) })
	for _, d := range []string{"pki", "logs", "varlib/kubelet", "varlog/pods", "sysctl", "out", "etcd"} {
		if err := os.MkdirAll(filepath.Join(k.Dir, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	if err := writePKI(filepath.Join(k.Dir, "pki")); err != nil {
		tb.Fatalf("write the cluster's certificates: %v", err)
	}
	if err := k.writeConfigs(); err != nil {
		tb.Fatalf("write the cluster's configuration: %v", err)
	}
	if err := makeCgroupRoot(k.CgroupRoot); err != nil {
		tb.Fatalf("create the kubelet's cgroupRoot: %v", err)
	}
	if err := k.startNamespace(); err != nil {
		tb.Fatal(err)
	}
	k.startDaemons(tb)
	k.applyContrib(tb)
	out, _ := k.Kubectl(nil, "version")
	tb.Logf("cluster ready after %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	return k
}

// startDaemons starts etcd, the apiserver and the kubelet, and waits until the kubelet registered
// its node.
func (k *Cluster) startDaemons(tb testing.TB) {
	tb.Helper()
	pki := filepath.Join(k.Dir, "pki")
	k.startDaemon(tb, "etcd", "--name", "graceful", "--data-dir", filepath.Join(k.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "graceful=http://127.0.0.1:2380")
	k.startDaemon(tb, "kube-apiserver", "--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0",
		"--secure-port=6443", "--advertise-address="+nodeIP,
		"--tls-cert-file="+pki+"/apiserver.crt", "--tls-private-key-file="+pki+"/apiserver.key",
		"--client-ca-file="+pki+"/ca.crt", "--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+pki+"/sa.pub", "--service-account-signing-key-file="+pki+"/sa.key",
		"--service-cluster-ip-range=10.96.0.0/24", "--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
		"--kubelet-client-certificate="+pki+"/apiserver-kubelet-client.crt",
		"--kubelet-client-key="+pki+"/apiserver-kubelet-client.key",
		"--cert-dir="+filepath.Join(k.Dir, "apiserver-certs"), "--profiling=false",
		"--feature-gates=ContainerStopSignals=true")
	// The apiserver has no readiness notification: ask until it answers.
	k.waitFor(tb, "the apiserver", 120*time.Second, func() error {
		_, err := k.Kubectl(nil, "get", "--raw", "/readyz")
		return err
	})
	k.startDaemon(tb, "kubelet", "--config", filepath.Join(k.Dir, "kubelet-config.yaml"),
		"--kubeconfig", filepath.Join(pki, "kubelet.kubeconfig"), "--root-dir", filepath.Join(k.Dir, "varlib", "kubelet"),
		"--hostname-override", node, "--node-ip", nodeIP, "--v=2")
	if out, err := k.Kubectl(nil, "wait", "--for=create", "node/"+node, "--timeout=120s"); err != nil {
		tb.Fatalf("the kubelet did not register its node: %v\n%s\n%s", err, out, k.log("kubelet"))
	}
}

// applyContrib creates the default service account (there is no controller-manager) and applies
// contrib/runtimeclass.yaml as written: both RuntimeClasses and its example pod, which names no
// node and stays Pending here (no scheduler); it is deleted again.
func (k *Cluster) applyContrib(tb testing.TB) {
	tb.Helper()
	if out, err := k.Kubectl([]byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n"), "apply", "-f", "-"); err != nil {
		tb.Fatalf("create the default service account (no controller-manager): %v\n%s", err, out)
	}
	contribRC := filepath.Join(stack.ModuleRoot(), "contrib", "runtimeclass.yaml")
	if out, err := k.Kubectl(nil, "apply", "-f", contribRC); err != nil {
		tb.Fatalf("kubectl apply -f contrib/runtimeclass.yaml: %v\n%s", err, out)
	}
	if out, err := k.Kubectl(nil, "delete", "pod", "worker", "--wait=true", "--timeout=60s"); err != nil {
		tb.Fatalf("delete contrib's example pod: %v\n%s", err, out)
	}
}

// close deletes what pods are left, stops the kubelet, the apiserver and etcd, ends the private
// namespace and checks that nothing is left: no process in the namespace, no cgroup, no mount,
// and the host's /var/lib/kubelet, /var/log/pods, sysctls and iptables as they were.
func (k *Cluster) close(tb testing.TB, hostBefore string) {
	if tb.Failed() {
		for _, d := range k.daemons {
			if d.Name == "kubelet" || d.Name == "kube-apiserver" {
				d.SaveLog(tb)
			}
		}
	}
	if k.holder != nil && len(k.daemons) == 3 {
		if out, err := k.Kubectl(nil, "delete", "pods", "--all", "--wait=true", "--timeout=60s"); err != nil {
			tb.Errorf("delete the pods left: %v\n%s", err, out)
		}
	}
	// The apiserver before etcd: without etcd it hangs for minutes.
	for i := len(k.daemons) - 1; i >= 0; i-- {
		k.daemons[i].Stop(tb, 30*time.Second)
	}
	if k.holder != nil {
		k.endNamespace(tb)
	}
	for _, m := range stack.MountsUnder(k.Dir) {
		tb.Errorf("mount left on the host: %s", m)
	}
	for _, d := range removeCgroupTree(k.CgroupRoot) {
		tb.Errorf("cgroup left: %s", d)
	}
	if after := hostState(); after != hostBefore {
		tb.Errorf("the host changed:\nbefore:\n%s\nafter:\n%s", hostBefore, after)
	}
	os.RemoveAll(k.Dir)
}

// endNamespace kills the holder of the private namespace, and any process left in it (an error).
func (k *Cluster) endNamespace(tb testing.TB) {
	netns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", k.holder.Process.Pid))
	k.holder.Process.Kill()
	k.holder.Wait()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net")); err == nil && ns == netns {
			cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			tb.Errorf("process left in the private namespace: %s %q", e.Name(), bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// hostState is what the kubelet must not change on the host: whether /var/lib/kubelet and
// /var/log/pods exist, the sysctls it sets, and the host's KUBE iptables chains.
func hostState() string {
	var b strings.Builder
	for _, p := range []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers"} {
		fmt.Fprintf(&b, "%s exists: %v\n", p, stack.FileExists(p))
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
