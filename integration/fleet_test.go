package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"

	"github.com/graceful-shim/graceful/integration/kube"
	"github.com/graceful-shim/graceful/integration/stack"
	"github.com/graceful-shim/graceful/process"
)

// nodeImage is the name the fleet test imports its node image under.
const nodeImage = "docker.io/graceful/graceful:test"

// TestKubernetesFleet rolls graceful out to a real single-node cluster the way an operator does:
// a kube-controller-manager and kube-scheduler run the DaemonSets, the node's containerd imports
// its drop-in dir and has no graceful handler. The node image (busybox with the installer, the
// binaries and graceful-exporter at the Dockerfile's paths) is imported into the node's
// containerd, no registry. contrib/node-installer/daemonset.yaml, with the image, the node's paths
// and the restart command rewritten, installs the binaries and the drop-in and asks for a
// containerd restart; a pod of RuntimeClass graceful is then served by the installed shim and
// stops gracefully. contrib/exporter/daemonset.yaml runs the exporter (in-cluster configuration,
// contrib's RBAC): after a stop that SIGKILLs a TERM-ignoring process its metrics (over HTTP)
// name the pod, and the pod has a GracefulStopKilled Event (kubectl get events). Last, the
// uninstall the manifest's comments describe removes exactly what the install added.
func TestKubernetesFleet(t *testing.T) {
	skipUnlessOptedIn(t, "GRACEFUL_KUBERNETES", "make test-kubernetes", "run a kubelet")
	start := time.Now()
	// Not below /run, which the kubelet's namespace covers: it checks the installer's hostPath.
	root, err := os.MkdirTemp("", fleetDirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never remove through a mount: root/host is a bind of the host's /.
		if m := stack.MountsUnder(root); len(m) > 0 {
			t.Errorf("%s not removed: mounts left below it: %v", root, m)
			return
		}
		os.RemoveAll(root)
	})
	node := newInstallerNode(t, filepath.Join(root, "node"))
	restarts := filepath.Join(root, "restarts")
	k := kube.StartWith(t, kube.Options{Controllers: true, NoContribHandlers: true, Imports: []string{node.confDir + "/*.toml"}})
	mainConfig := filepath.Join(k.CRI.Stack.Dir, "config.toml")
	srcDir := filepath.Join(k.CRI.Stack.Dir, "bin")

	// The node image, as contrib/node-installer/Dockerfile lays it out.
	exporterBin, err := stack.BuildExporter(root)
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	files := []stack.ImageFile{
		{Path: "opt/graceful/install.sh", Source: filepath.Join(stack.ModuleRoot(), "contrib", "node-installer", "install.sh")},
		{Path: "opt/graceful/bin/graceful-exporter", Source: exporterBin},
	}
	for _, b := range []string{"containerd-shim-graceful-v2", "graceful-init", "graceful-hold"} {
		files = append(files, stack.ImageFile{Path: "opt/graceful/bin/" + b, Source: filepath.Join(srcDir, b)})
	}
	if err := stack.BuildImage(&archive, "/bin/busybox", stack.ImageOptions{Name: nodeImage,
		Entrypoint: []string{"/opt/graceful/install.sh"}, Cmd: []string{"--help"}, Extra: files}); err != nil {
		t.Fatal(err)
	}
	k.ImportImage(t, &archive)
	before := treeOf(t, node.dir)
	privateRoot(t, root)
	hostRoot := sharedBind(t, "/", filepath.Join(root, "host"), true)
	// containerd's directory without the mounts below it (the containers' root file systems):
	// the socket, which a restart replaces, stays current in it.
	containerdDir := sharedBind(t, filepath.Dir(k.CRI.Stack.Address), filepath.Join(root, "containerd"), false)

	// Install: the restart command records the request; the test restarts the node's containerd.
	installer := contribManifest(t, "node-installer", "daemonset.yaml")
	rewriteInstaller(t, installer, node, hostRoot, mainConfig, restarts, "install")
	k.Apply(t, listOf(t, installer))
	waitRestartRequest(t, restarts, 1)
	k.RestartContainerd(t)
	k.WaitDaemonSetReady(t, "kube-system", "graceful-installer", 2*time.Minute)
	shim := filepath.Join(node.binDir, "containerd-shim-graceful-v2")
	for _, b := range []string{"containerd-shim-graceful-v2", "graceful-init", "graceful-hold"} {
		if got, want := fileHash(t, filepath.Join(node.binDir, b)), fileHash(t, filepath.Join(srcDir, b)); got != want {
			t.Errorf("installed %s differs from the image's", b)
		}
	}
	dropIn, err := os.ReadFile(filepath.Join(node.confDir, "graceful.toml"))
	if err != nil || !strings.Contains(string(dropIn), "runtime_path = '"+shim+"'") {
		t.Fatalf("the drop-in (%v) does not name the installed shim %s:\n%s", err, shim, dropIn)
	}

	// The exporter, as contrib/exporter/daemonset.yaml runs it; the API server is reached through
	// a forwarder on the host (the cluster's network is private) with the pod's own token.
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	exporter := contribManifest(t, "exporter", "daemonset.yaml")
	rewriteExporter(t, exporter, containerdDir, filepath.Base(k.CRI.Stack.Address), listen, k.APIServerForward(t))
	k.Apply(t, listOf(t, exporter))
	k.WaitDaemonSetReady(t, "kube-system", "graceful-exporter", 2*time.Minute)
	metricsURL := "http://" + listen + "/metrics"
	waitConnected(t, metricsURL, 0, nil)

	// A pod of RuntimeClass graceful: served by the installed shim, its child's TERM handler runs
	// to the end.
	p := k.RunPod(t, kube.PodSpec{Name: "installed", RuntimeClass: "graceful", Grace: 10,
		Containers: []kube.Container{{Name: "app", Script: kubeChild("child") + "echo > /out/ready-app\nwait"}}})
	p.WaitFile(t, "ready-child")
	init, _ := p.InitAndChild(t, "app")
	if exe := shimExe(t, init); exe != shim {
		t.Errorf("the pod's shim is %s, want the installed %s", exe, shim)
	}
	k.DeletePod(t, p)
	if got := p.Marker("child"); got != "clean" {
		t.Errorf("the child's TERM handler did not complete (marker %q)", got)
	}
	labels := map[string]string{"containerd_namespace": stack.CRINamespace, "namespace": "default", "pod": p.Name, "container": "app"}
	waitMetric(t, metricsURL, "graceful_stops_total", withLabels(labels, "result", "clean"), 1)

	// A stop that SIGKILLs a TERM-ignoring child: counted under the pod, and a Warning Event.
	q := k.RunPod(t, kube.PodSpec{Name: "ignoring", RuntimeClass: "graceful", Grace: 3,
		Containers: []kube.Container{{Name: "app", Script: kubeIgnoringChild + "trap \"exit 0\" TERM\necho > /out/ready-app\n" + loop}}})
	q.WaitFile(t, "ready-ignoring")
	id := q.ContainerID(t, "app")
	reports := k.Subscribe(t, "/graceful/stop")
	k.DeletePod(t, q)
	r := reports.NextReport(t, id)
	if r.Drain == nil || r.Drain.Totals["killed"] == 0 {
		t.Fatalf("the report of the TERM-ignoring child's stop: %+v, want processes killed", r.Drain)
	}
	labels = map[string]string{"containerd_namespace": stack.CRINamespace, "namespace": "default", "pod": q.Name, "container": "app"}
	waitMetric(t, metricsURL, "graceful_stops_total", withLabels(labels, "result", "killed"), 1)
	m := waitMetric(t, metricsURL, "graceful_stop_processes_total", withLabels(labels, "outcome", "killed"), float64(r.Drain.Totals["killed"]))
	if v, _ := m.Value("graceful_stop_grace_cut_total", labels); v != 1 {
		t.Errorf("grace cut stops of %s: %v, want 1 (kubelet's 3 s budget)", q.Name, v)
	}
	event := waitEvent(t, k, q.Name)
	t.Logf("event: %s", event.Message)
	want := fmt.Sprintf("SIGKILLed %d of", r.Drain.Totals["killed"])
	if event.Type != "Warning" || event.InvolvedObject.UID != q.UID || event.InvolvedObject.Kind != "Pod" ||
		!strings.Contains(event.Message, want) || !slices.Contains(eventCommands(event.Message), "sh") {
		t.Errorf("event %+v: want a Warning on pod %s (uid %s) saying %q and naming sh", event, q.Name, q.UID, want)
	}

	// Uninstall as the manifest's comments say: the same DaemonSet running uninstall.
	rewriteInstaller(t, installer, node, hostRoot, mainConfig, restarts, "uninstall")
	k.Apply(t, listOf(t, installer))
	waitRestartRequest(t, restarts, 2)
	k.RestartContainerd(t)
	k.WaitDaemonSetReady(t, "kube-system", "graceful-installer", 2*time.Minute)
	waitConnected(t, metricsURL, 1, nil) // the exporter rode out the restart
	kubectlDelete(t, k, installer)
	kubectlDelete(t, k, exporter)
	if diff := diffTrees(before, treeOf(t, node.dir)); diff != "" {
		t.Fatalf("uninstall did not restore the node:\n%s", diff)
	}
	if err := k.CRI.TryRunPod("graceful"); err == nil || !strings.Contains(err.Error(), `no runtime for "graceful"`) {
		t.Errorf("after uninstall, RunPodSandbox with handler graceful: %v, want \"no runtime for \\\"graceful\\\"\"", err)
	}
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// contribManifest reads a multi-document YAML manifest of contrib/ as JSON objects.
func contribManifest(t *testing.T, dir, name string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(stack.ModuleRoot(), "contrib", dir, name))
	if err != nil {
		t.Fatal(err)
	}
	var objects []map[string]any
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var o map[string]any
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("contrib/%s/%s: %v", dir, name, err)
		}
		if o != nil {
			objects = append(objects, o)
		}
	}
	return objects
}

// podTemplate returns the first container and the pod spec of the manifest's DaemonSet.
func podTemplate(t *testing.T, objects []map[string]any) (container, spec map[string]any) {
	t.Helper()
	for _, o := range objects {
		if o["kind"] == "DaemonSet" {
			spec = o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
			return spec["containers"].([]any)[0].(map[string]any), spec
		}
	}
	t.Fatal("no DaemonSet in the manifest")
	return nil, nil
}

// setEnv sets the container's environment variable name, adding it when missing.
func setEnv(c map[string]any, name, value string) {
	env, _ := c["env"].([]any)
	for _, e := range env {
		if e := e.(map[string]any); e["name"] == name {
			e["value"] = value
			return
		}
	}
	c["env"] = append(env, map[string]any{"name": name, "value": value})
}

// rewriteInstaller points the installer DaemonSet at the test's image, host root, node paths and
// restart command, running action (install or uninstall, the way the manifest's comments say).
func rewriteInstaller(t *testing.T, objects []map[string]any, node installerNode, hostRoot, mainConfig, restarts, action string) {
	t.Helper()
	c, spec := podTemplate(t, objects)
	for _, v := range spec["volumes"].([]any) {
		if v := v.(map[string]any); v["name"] == "host" {
			v["hostPath"].(map[string]any)["path"] = hostRoot
		}
	}
	c["image"], c["imagePullPolicy"] = nodeImage, "Never"
	command := c["command"].([]any)
	script := command[len(command)-1].(string)
	script = strings.Replace(script, "install.sh install ", "install.sh "+action+" ", 1)
	script = strings.Replace(script, "install.sh uninstall ", "install.sh "+action+" ", 1)
	command[len(command)-1] = script
	setEnv(c, "GRACEFUL_BIN_DIR", node.binDir)
	setEnv(c, "GRACEFUL_CONF_DIR", node.confDir)
	setEnv(c, "GRACEFUL_STATE_DIR", node.stateDir)
	setEnv(c, "GRACEFUL_CONTAINERD_CONFIG", mainConfig)
	setEnv(c, "GRACEFUL_RESTART", "command")
	setEnv(c, "GRACEFUL_RESTART_CMD", `echo restart >> "$GRACEFUL_HOST_ROOT"`+restarts)
}

// rewriteExporter points the exporter DaemonSet at the test's image, containerd's directory and
// socket's name in it, listen address and API server forwarder.
func rewriteExporter(t *testing.T, objects []map[string]any, containerdDir, socket, listen, apiServer string) {
	t.Helper()
	c, spec := podTemplate(t, objects)
	c["image"], c["imagePullPolicy"] = nodeImage, "Never"
	command := c["command"].([]any)
	for i, a := range command {
		switch name, _, _ := strings.Cut(a.(string), "="); name {
		case "--listen":
			command[i] = "--listen=" + listen
		case "--address":
			command[i] = "--address=/run/containerd/" + socket
		}
	}
	command = append(command, "--event-interval=1m")
	c["command"] = command
	host, port, _ := strings.Cut(apiServer, ":")
	setEnv(c, "KUBERNETES_SERVICE_HOST", host)
	setEnv(c, "KUBERNETES_SERVICE_PORT", port)
	for _, v := range spec["volumes"].([]any) {
		if v := v.(map[string]any); v["name"] == "containerd-run" {
			v["hostPath"].(map[string]any)["path"] = containerdDir
		}
	}
}

// waitRestartRequest waits until the installer's restart command has run n times in all.
func waitRestartRequest(t *testing.T, restarts string, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		data, _ := os.ReadFile(restarts)
		got := strings.Count(string(data), "restart\n")
		if got == n {
			return
		}
		if got > n || time.Now().After(deadline) {
			t.Fatalf("the installer asked for %d containerd restarts, want %d", got, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitConnected waits until the exporter at metricsURL is subscribed to containerd's events,
// with reconnects re-subscriptions, and returns that scrape; alive, if not nil, fails the wait
// early with its error.
func waitConnected(t *testing.T, metricsURL string, reconnects float64, alive func() error) stack.Metrics {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := stack.Scrape(metricsURL)
		if err == nil {
			c, _ := m.Value("graceful_exporter_containerd_connected", nil)
			r, _ := m.Value("graceful_exporter_containerd_reconnects_total", nil)
			if c == 1 && r == reconnects {
				return m
			}
			err = fmt.Errorf("connected %v, reconnects %v", c, r)
		}
		if alive != nil {
			if err := alive(); err != nil {
				t.Fatal(err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the exporter at %s is not subscribed with %v reconnects after a minute: %v", metricsURL, reconnects, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shimExe is the executable of the shim whose child init is.
func shimExe(t *testing.T, init int) string {
	t.Helper()
	st, err := process.ReadStatus(init)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", st.PPid))
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// kubeEvent is the part of a core/v1 Event the test reads.
type kubeEvent struct {
	Type           string `json:"type"`
	Reason         string `json:"reason"`
	Message        string `json:"message"`
	InvolvedObject struct {
		Kind, Name, UID string
	} `json:"involvedObject"`
}

// waitEvent waits for the GracefulStopKilled Event of pod, read with kubectl get events.
func waitEvent(t *testing.T, k *kube.Cluster, pod string) kubeEvent {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := k.Kubectl(nil, "get", "events", "-n", "default", "--field-selector",
			"reason=GracefulStopKilled,involvedObject.name="+pod, "-o", "json")
		if err == nil {
			var list struct{ Items []kubeEvent }
			if err = json.Unmarshal([]byte(out), &list); err == nil && len(list.Items) > 0 {
				if len(list.Items) > 1 {
					t.Errorf("%d GracefulStopKilled events for pod %s, want 1", len(list.Items), pod)
				}
				return list.Items[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no GracefulStopKilled event for pod %s after a minute: %v %s", pod, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// withLabels returns labels with the name, value pairs of pairs set.
func withLabels(labels map[string]string, pairs ...string) map[string]string {
	m := maps.Clone(labels)
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return m
}

// listOf is objects as one kubectl List.
func listOf(t *testing.T, objects []map[string]any) []byte {
	t.Helper()
	list, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": objects})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// kubectlDelete deletes the objects with kubectl and waits until they are gone.
func kubectlDelete(t *testing.T, k *kube.Cluster, objects []map[string]any) {
	t.Helper()
	if out, err := k.Kubectl(listOf(t, objects), "delete", "--wait=true", "--timeout=120s", "-f", "-"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
}

// eventCommands returns the commands a GracefulStopKilled message names: after "grace period",
// an optional parenthesis and ": ", separated by ", ", with an optional " and N more".
func eventCommands(message string) []string {
	_, rest, _ := strings.Cut(message, "grace period")
	_, list, ok := strings.Cut(rest, ": ")
	if !ok {
		return nil
	}
	list, _, _ = strings.Cut(list, " and ")
	return strings.Split(list, ", ")
}

// fleetDirPrefix names the fleet test's directory in the temporary directory; testguard detaches
// what a killed run left mounted there.
const fleetDirPrefix = "graceful-fleet-"

// privateRoot binds root on itself as a private mount, so that nothing mounted below it
// propagates anywhere else (on a host whose / is shared); cleanup detaches it and all below.
func privateRoot(t *testing.T, root string) {
	t.Helper()
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s on itself: %v", root, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", root, err)
		}
	})
	if err := unix.Mount("", root, "", unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make %s private: %v", root, err)
	}
}

// sharedBind bind-mounts src at the new directory dst (with the mounts below src when recursive)
// as a shared mount, and returns dst. The DaemonSets' hostPaths have mountPropagation
// HostToContainer, which needs a shared or slave mount, as / is on a systemd host; this
// machine's / is private, and making it shared would change the host. dst must be below a
// privateRoot.
func sharedBind(t *testing.T, src, dst string, recursive bool) string {
	t.Helper()
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	flags := uintptr(unix.MS_BIND)
	if recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(src, dst, "", flags, ""); err != nil {
		t.Fatalf("bind %s at %s: %v", src, dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		t.Fatalf("make %s shared: %v", dst, err)
	}
	return dst
}
