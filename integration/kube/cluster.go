// Package kube runs a single-node Kubernetes cluster for the tests — etcd, kube-apiserver and a
// kubelet, built by install-kubernetes.sh — on a private CRI containerd configured with
// contrib/containerd-config.toml (paths rewritten), and drives pods with kubectl: pods name their
// node, so no scheduler is needed. StartWith can add kube-controller-manager and kube-scheduler
// (DaemonSets, service accounts) and leave contrib's handlers out of containerd. etcd, the
// apiserver, the kubelet and the controllers run in a private mount and network namespace, so
// that the kubelet's sysctls, iptables chains, /var/lib/kubelet and /var/log/pods never touch the
// host; containerd and its shims run in the host's namespaces, as on a node, and see the
// kubelet's volume mounts (its root directory is a mount shared between both namespaces).
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

	"golang.org/x/sys/unix"

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
	// cniConflist is a CNI network that no pod uses (they are all hostNetwork; its plugin is not
	// even installed): without one, CRI reports NetworkReady false and the node is never Ready.
	// Version 1.0.0: CRI's status check runs a plugin's STATUS from 1.1.0 on only.
	cniConflist = `{"cniVersion": "1.0.0", "name": "graceful-unused", "plugins": [{"type": "loopback"}]}`
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
	opts       Options
	bin        map[string]string
	holder     *exec.Cmd // holds the private mount and network namespace
	daemons    []*stack.Daemon
	// sharedRoot is the kubelet's root directory, bind-mounted on itself on the host with shared
	// propagation before the private namespace is created: the tmpfs mounts of the pods'
	// secret and projected volumes (service-account tokens) that the kubelet makes in the private
	// namespace reach the host, where containerd bind-mounts them into the containers.
	sharedRoot string
	images     []string // imported with ImportImage
	seq        int
}

// Options are what StartWith adds to Start's cluster.
type Options struct {
	// Controllers also runs kube-controller-manager (the DaemonSet, service-account, root CA
	// publisher and garbage-collector controllers) and kube-scheduler: DaemonSets run, and each
	// namespace gets its default service account and kube-root-ca.crt.
	Controllers bool
	// NoContribHandlers starts the CRI containerd without contrib/containerd-config.toml's graceful
	// handlers (the stock runc handler only, plus Imports), and does not apply
	// contrib/runtimeclass.yaml.
	NoContribHandlers bool
	// Imports is the CRI containerd's main config's imports list (drop-in files or globs).
	Imports []string
}

// Start starts the CRI containerd with contrib's handlers, the private namespace, etcd, the
// apiserver and the kubelet, and applies contrib/runtimeclass.yaml; cleanup stops everything and
// checks that nothing is left on the host. It is StartWith with zero Options.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	return StartWith(tb, Options{})
}

// StartWith starts the cluster with opts: Start's, plus the controllers when opts.Controllers,
// without contrib's handlers and RuntimeClasses when opts.NoContribHandlers. It returns when the
// node is registered, the default service account exists in the default namespace and, with the
// controllers, kube-controller-manager and kube-scheduler answer their /healthz.
func StartWith(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	k := &Cluster{bin: map[string]string{}, opts: opts}
	bins := []string{"kubelet", "kube-apiserver", "kubectl", "etcd"}
	if opts.Controllers {
		bins = append(bins, "kube-controller-manager", "kube-scheduler")
	}
	for _, b := range bins {
		v := stack.ToolVersion("KUBERNETES_VERSION", kubernetesDefaultVersion)
		if b == "etcd" {
			v = stack.ToolVersion("ETCD_VERSION", etcdDefaultVersion)
		}
		k.bin[b] = stack.Tool(tb, b, v, "install-kubernetes.sh")
	}
	hostBefore := hostState()

	var config string
	var err error
	if !opts.NoContribHandlers {
		config, err = containerdConfig(filepath.Join(stack.ModuleRoot(), "contrib", "containerd-config.toml"))
		if err != nil {
			tb.Fatalf("contrib's containerd config: %v", err)
		}
	}
	start := time.Now()
	k.CRI = cri.Start(tb, cri.Setup{NoHandlers: true, ExtraConfig: config, Imports: opts.Imports, CNIConflist: cniConflist})

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
	if opts.Controllers {
		k.startControllerManager(tb)
	}
	k.applyContrib(tb)
	if opts.Controllers {
		// After applyContrib: contrib's example pod, which names no node, stays Pending.
		k.startScheduler(tb)
	}
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
		// The node's name resolves nowhere: reach the kubelet (node proxy, logs) at its IP.
		"--kubelet-preferred-address-types=InternalIP",
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

// applyContrib creates the default service account (without controller-manager; with it, waits
// until its serviceaccount controller created it) and, with contrib's handlers, applies
// contrib/runtimeclass.yaml as written: both RuntimeClasses and its example pod, which names no
// node and stays Pending here (no scheduler yet); it is deleted again.
func (k *Cluster) applyContrib(tb testing.TB) {
	tb.Helper()
	if k.opts.Controllers {
		if out, err := k.Kubectl(nil, "wait", "--for=create", "serviceaccount/default", "-n", "default", "--timeout=60s"); err != nil {
			tb.Fatalf("the serviceaccount controller did not create the default service account: %v\n%s\n%s", err, out, k.log("kube-controller-manager"))
		}
	} else if out, err := k.Kubectl([]byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n"), "apply", "-f", "-"); err != nil {
		tb.Fatalf("create the default service account (no controller-manager): %v\n%s", err, out)
	}
	if k.opts.NoContribHandlers {
		return
	}
	contribRC := filepath.Join(stack.ModuleRoot(), "contrib", "runtimeclass.yaml")
	if out, err := k.Kubectl(nil, "apply", "-f", contribRC); err != nil {
		tb.Fatalf("kubectl apply -f contrib/runtimeclass.yaml: %v\n%s", err, out)
	}
	if out, err := k.Kubectl(nil, "delete", "pod", "worker", "--wait=true", "--timeout=60s"); err != nil {
		tb.Fatalf("delete contrib's example pod: %v\n%s", err, out)
	}
}

// close deletes what DaemonSets and pods are left (in every namespace), stops the scheduler, the
// controller-manager, the kubelet, the apiserver and etcd, ends the private namespace and checks
// that nothing is left: no process in the namespace, no cgroup, no mount, and the host's
// /var/lib/kubelet, /var/log/pods, sysctls and iptables as they were.
func (k *Cluster) close(tb testing.TB, hostBefore string) {
	if tb.Failed() {
		for _, d := range k.daemons {
			if d.Name != "etcd" {
				d.SaveLog(tb)
			}
		}
	}
	// Only when the apiserver and the kubelet run: without a kubelet a pod's deletion never ends.
	if k.holder != nil && k.running("kube-apiserver") && k.running("kubelet") {
		// DaemonSets first: their controller would recreate the pods.
		if out, err := k.Kubectl(nil, "delete", "daemonsets", "--all", "-A", "--wait=true", "--timeout=60s"); err != nil {
			tb.Errorf("delete the DaemonSets left: %v\n%s", err, out)
		}
		if out, err := k.Kubectl(nil, "delete", "pods", "--all", "-A", "--wait=true", "--timeout=60s"); err != nil {
			tb.Errorf("delete the pods left: %v\n%s", err, out)
		}
	}
	// In the reverse order of their start: the scheduler and the controller-manager before the
	// apiserver, the apiserver before etcd (without etcd it hangs for minutes).
	for i := len(k.daemons) - 1; i >= 0; i-- {
		k.daemons[i].Stop(tb, 30*time.Second)
	}
	if k.holder != nil {
		k.endNamespace(tb)
	}
	if k.sharedRoot != "" {
		// The kubelet unmounts a pod's volumes before the pod is deleted.
		for _, m := range stack.MountsUnder(k.sharedRoot) {
			tb.Errorf("volume mount left by the kubelet: %s", m)
			unix.Unmount(m, unix.MNT_DETACH)
		}
		if err := unix.Unmount(k.sharedRoot, 0); err != nil {
			tb.Errorf("unmount the kubelet's root directory %s: %v", k.sharedRoot, err)
			unix.Unmount(k.sharedRoot, unix.MNT_DETACH)
		}
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
