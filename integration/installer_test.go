package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/cri"
	"github.com/graceful-shim/graceful/integration/stack"
)

// TestNodeInstaller runs contrib/node-installer/install.sh as the DaemonSet does — in a mount
// namespace of its own with the host's / mounted at a host-root directory — against a private CRI
// containerd whose main config imports a drop-in dir and has no graceful handler: after install
// (and the restart the script asks for) the handlers graceful and graceful-init run pods with the
// installed binaries; after uninstall everything it added is gone and, after the restart, the
// handler is unknown again. The node's directories are below a temp dir; the restart command
// the script runs records the restart, and the test then restarts the daemon. Last, --add-imports
// on a config without imports, checked with containerd's config dump, and undone by uninstall.
func TestNodeInstaller(t *testing.T) {
	start := time.Now()
	root, err := os.MkdirTemp("/run", "graceful-installer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	node := newInstallerNode(t, filepath.Join(root, "node")) // the node's /usr/local, /etc, /var/lib
	binDir, confDir := node.binDir, node.confDir
	restarts := filepath.Join(root, "restarts")
	hostRoot := filepath.Join(root, "host") // where the script sees the host's /

	env := cri.Start(t, cri.Setup{NoHandlers: true, Imports: []string{confDir + "/*.toml"}})
	t.Logf("CRI daemon ready after %v", time.Since(start).Round(time.Millisecond))
	mainConfig := filepath.Join(env.Stack.Dir, "config.toml")
	srcDir := filepath.Join(env.Stack.Dir, "bin") // the shim and graceful-init the stack built

	script := filepath.Join(stack.ModuleRoot(), "contrib", "node-installer", "install.sh")
	runOn := func(n installerNode, action string, args ...string) (string, error) {
		t.Helper()
		if err := os.MkdirAll(hostRoot, 0o755); err != nil {
			t.Fatal(err)
		}
		args = append([]string{action,
			"--host-root", hostRoot, "--src-dir", srcDir, "--bin-dir", n.binDir, "--conf-dir", n.confDir,
			"--state-dir", n.stateDir, "--restart-cmd", "echo restart >> " + restarts}, args...)
		// A private mount namespace with the host's / at hostRoot, as in the DaemonSet's pod.
		cmd := exec.Command("unshare", append([]string{"-m", "sh", "-ec",
			`mount --make-rprivate / && mount --rbind / "$0" && exec sh "$@"`, hostRoot, script}, args...)...)
		cmd.Env = append(os.Environ(), "GRACEFUL_CONTAINERD_CONFIG="+mainConfig)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		t.Logf("install.sh %s (%v):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
		return string(out), err
	}
	run := func(action string, args ...string) (string, error) {
		t.Helper()
		return runOn(node, action, args...)
	}
	nRestarts := func() int {
		data, _ := os.ReadFile(restarts)
		return strings.Count(string(data), "restart\n")
	}
	before := treeOf(t, node.dir)
	noHandler := func(when string) {
		t.Helper()
		err := env.TryRunPod("graceful")
		if err == nil || !strings.Contains(err.Error(), `no runtime for "graceful"`) {
			t.Fatalf("%s: RunPodSandbox with handler graceful: %v, want \"no runtime for \\\"graceful\\\"\"", when, err)
		}
	}
	noHandler("before install")

	// Without the imports line in the main config, install refuses, says what to add, and changes
	// nothing.
	plain := filepath.Join(root, "plain.toml")
	if err := os.WriteFile(plain, []byte("version = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run("install", "--containerd-config", plain)
	if err == nil || !strings.Contains(out, fmt.Sprintf(`imports = [%q]`, confDir+"/*.toml")) {
		t.Fatalf("install without imports in the main config: %v, want a failure that names the imports line", err)
	}
	if diff := diffTrees(before, treeOf(t, node.dir)); diff != "" || nRestarts() != 0 {
		t.Fatalf("a refused install changed the node (restarts %d):\n%s", nRestarts(), diff)
	}

	if _, err := run("install"); err != nil {
		t.Fatalf("install: %v", err)
	}
	if n := nRestarts(); n != 1 {
		t.Fatalf("install ran the restart command %d times, want 1", n)
	}
	shim := filepath.Join(binDir, "containerd-shim-graceful-v2")
	for _, b := range []string{"containerd-shim-graceful-v2", "graceful-init", "graceful-hold"} {
		if got, want := fileHash(t, filepath.Join(binDir, b)), fileHash(t, filepath.Join(srcDir, b)); got != want {
			t.Errorf("installed %s differs from the source", b)
		}
	}
	if out, err := run("install"); err != nil || !strings.Contains(out, "nothing changed") || nRestarts() != 1 {
		t.Fatalf("second install: %v, restarts %d; want no change and no restart", err, nRestarts())
	}
	env.Restart(t)

	// The graceful handler: the pod's shim is the installed binary, and a stop drains.
	h := &cri.Handler{Name: "graceful", Shim: shim}
	p := env.RunPod(t, h, runtimeapi.NamespaceMode_CONTAINER, nil)
	p.CheckShim(t)
	c := p.Start(t, "app", criTrappingChild, nil)
	c.WaitFile(t, "child-ready")
	p.Stop(t, c, 10)
	if got := c.Marker("child"); got != "clean" {
		t.Errorf("handler graceful: the child's TERM handler did not complete (marker %q)", got)
	}
	p.DrainLogged(t, c)
	p.Teardown(t)

	// The graceful-init handler: the container's init is graceful-init.
	hi := &cri.Handler{Name: "graceful-init", Shim: shim, Init: true}
	pi := env.RunPod(t, hi, runtimeapi.NamespaceMode_CONTAINER, nil)
	pi.CheckShim(t)
	ci := pi.Start(t, "app", ": @TAG@\n"+criLoop, nil)
	if comm := initComm(t, env, ci); comm != "graceful-init" {
		t.Errorf("handler graceful-init: the container's init is %q, want graceful-init", comm)
	}
	pi.Teardown(t)

	if _, err := run("uninstall"); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if n := nRestarts(); n != 2 {
		t.Fatalf("after uninstall the restart command ran %d times, want 2", n)
	}
	if diff := diffTrees(before, treeOf(t, node.dir)); diff != "" {
		t.Fatalf("uninstall did not restore the node:\n%s", diff)
	}
	if out, err := run("uninstall"); err != nil || !strings.Contains(out, "nothing to uninstall") || nRestarts() != 2 {
		t.Fatalf("second uninstall: %v, restarts %d; want nothing to do and no restart", err, nRestarts())
	}
	env.Restart(t)
	noHandler("after uninstall")

	// --add-imports on a node whose main config lacks the imports line: the line is added where
	// containerd reads it (its config dump then has the handlers), and uninstall restores the
	// config byte for byte.
	node2 := newInstallerNode(t, filepath.Join(root, "node2"))
	config2 := filepath.Join(node2.dir, "etc", "containerd", "config.toml")
	if err := os.WriteFile(config2, []byte("version = 3\n\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_selinux = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before2 := treeOf(t, node2.dir)
	if _, err := runOn(node2, "install", "--containerd-config", config2, "--add-imports", "--restart", "none"); err != nil {
		t.Fatalf("install --add-imports: %v", err)
	}
	dump, err := exec.Command(filepath.Join(env.Stack.ContainerdBin, "containerd"), "--config", config2, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, dump)
	}
	for _, want := range []string{"runtimes.graceful-init", "runtime_path = '" + filepath.Join(node2.binDir, "containerd-shim-graceful-v2") + "'"} {
		if !strings.Contains(string(dump), want) {
			t.Errorf("containerd config dump after install --add-imports lacks %q:\n%s", want, dump)
		}
	}
	if _, err := runOn(node2, "uninstall", "--containerd-config", config2, "--restart", "none"); err != nil {
		t.Fatalf("uninstall (--add-imports): %v", err)
	}
	if diff := diffTrees(before2, treeOf(t, node2.dir)); diff != "" {
		t.Fatalf("uninstall after --add-imports did not restore the node:\n%s", diff)
	}
	if n := nRestarts(); n != 2 {
		t.Errorf("--restart none ran the restart command (%d restarts, want 2)", n)
	}
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// installerNode is a node's directory layout below a temp dir, as install.sh's host paths.
type installerNode struct {
	dir, binDir, confDir, stateDir string
}

// newInstallerNode creates the layout under dir: bin dir (with another tool the installer must
// leave alone), /etc/containerd without conf.d, /var/lib.
func newInstallerNode(t *testing.T, dir string) installerNode {
	t.Helper()
	n := installerNode{
		dir:      dir,
		binDir:   filepath.Join(dir, "usr", "local", "bin"),
		confDir:  filepath.Join(dir, "etc", "containerd", "conf.d"),
		stateDir: filepath.Join(dir, "var", "lib", "graceful-node-installer"),
	}
	for _, d := range []string{n.binDir, filepath.Dir(n.confDir), filepath.Dir(n.stateDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(n.binDir, "other-tool"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

// initComm returns /proc/<pid>/comm of the container's init, its task's pid in containerd.
func initComm(t *testing.T, env *cri.Env, c *cri.Container) string {
	t.Helper()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", env.TaskPid(t, c)))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(comm))
}

// treeOf maps every path below dir to its kind, mode and (for files) content hash.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		v := info.Mode().String()
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			v += " " + hex.EncodeToString(sum[:])
		}
		tree[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// diffTrees describes how tree b differs from tree a ("" if not at all).
func diffTrees(a, b map[string]string) string {
	var d strings.Builder
	for p, v := range a {
		if w, ok := b[p]; !ok {
			fmt.Fprintf(&d, "gone: %s\n", p)
		} else if v != w {
			fmt.Fprintf(&d, "changed: %s (%s → %s)\n", p, v, w)
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			fmt.Fprintf(&d, "added: %s\n", p)
		}
	}
	return d.String()
}
