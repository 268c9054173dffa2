package kube

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// containerdConfig is contrib/containerd-config.toml for the CRI daemon: its version line
// dropped (the stack's config has one), the options file and the runtime_path pointed at the
// test's.
func containerdConfig(contrib string) (string, error) {
	data, err := os.ReadFile(contrib)
	if err != nil {
		return "", err
	}
	config := string(data)
	rewrites := []string{
		"ConfigPath = '" + contribConfigPath + "'", "ConfigPath = '@CONFIG@'",
		"runtime_path = '" + contribShimPath + "'", "runtime_path = '@SHIM@'",
		"\nversion = 3\n", "\n",
	}
	for i := 0; i < len(rewrites); i += 2 {
		if !strings.Contains(config, rewrites[i]) {
			return "", fmt.Errorf("%s does not contain %q, which the test rewrites", contrib, rewrites[i])
		}
	}
	return strings.NewReplacer(rewrites...).Replace(config), nil
}

// writeConfigs writes the kubelet's and the scheduler's configurations, the kubelet's resolv.conf,
// the kubeconfigs and the fake sysctl files that the kubelet checks and would otherwise write on
// the host.
func (k *Cluster) writeConfigs() error {
	pki := filepath.Join(k.Dir, "pki")
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
`, k.CgroupRoot, k.CRI.Stack.Address, filepath.Join(k.Dir, "varlog", "pods"), filepath.Join(k.Dir, "resolv.conf"), pki)
	scheduler := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: %s/admin.kubeconfig}
leaderElection: {leaderElect: false}
`, pki)
	files := map[string]string{
		"kubelet-config.yaml":   kubelet,
		"scheduler-config.yaml": scheduler,
		"resolv.conf":           "nameserver 127.0.0.1\n",
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
		p := filepath.Join(k.Dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// kubeconfig is the kubeconfig of user (admin, kubelet) for the apiserver, with the
// certificates in pki.
func kubeconfig(pki, user string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: k, cluster: {server: "https://127.0.0.1:6443", certificate-authority: %[1]s/ca.crt}}]
users: [{name: u, user: {client-certificate: %[1]s/%[2]s.crt, client-key: %[1]s/%[2]s.key}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
current-context: c
`, pki, user)
}
