package kube

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/integration/stack"
)

// startNamespace starts the process that holds the private mount and network namespace: /run a
// tmpfs (with the CRI daemon's directory, for its socket, moved in), /var/lib and /var/log
// bound from the test's directory, fake sysctl files bound over /proc/sys, loopback and a veth
// with the node IP. Every mount of the namespace is private but the kubelet's root directory,
// which is bound on itself on the host with shared propagation first: the namespace's copy is
// its peer, so the volume mounts the kubelet makes there (the tmpfs of a secret or projected
// volume) appear on the host too, where containerd and runc bind them into the containers.
func (k *Cluster) startNamespace() error {
	root := filepath.Join(k.Dir, "varlib", "kubelet")
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount the kubelet's root directory %s: %w", root, err)
	}
	k.sharedRoot = root
	if err := unix.Mount("", root, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make the kubelet's root directory %s shared: %w", root, err)
	}
	script := fmt.Sprintf(`set -e
# Private, every mount but the kubelet's root directory (the copies of shared host mounts are their
# peers until then).
shared() { awk -v keep=%[4]s '/ shared:/ && $5 != keep && index($5, keep "/") != 1 {print $5}' /proc/self/mountinfo; }
shared | while read -r m; do mount --make-private "$(printf '%%b' "$m")" || true; done
# Checked, since the tmpfs over /run below would otherwise reach the host's /run.
if [ -n "$(shared)" ]; then echo "shared mounts left in the namespace: $(shared)" >&2; exit 1; fi
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
`, k.Dir, k.CRI.Stack.Dir, nodeIP, root)
	k.holder = exec.Command("unshare", "--mount", "--net", "--propagation", "unchanged", "sh", "-c", script)
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
func (k *Cluster) startDaemon(tb testing.TB, name string, args ...string) {
	tb.Helper()
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(k.holder.Process.Pid), "-m", "-n", "--", "nice", k.bin[name]}, args...)...)
	d, err := stack.StartDaemon(name, filepath.Join(k.Dir, "logs", name+".log"), cmd, syscall.SIGKILL)
	if err != nil {
		tb.Fatal(err)
	}
	k.daemons = append(k.daemons, d)
}

// waitFor retries check until it succeeds, a daemon exits or the timeout passes.
func (k *Cluster) waitFor(tb testing.TB, what string, timeout time.Duration, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		for _, d := range k.daemons {
			if exited, exit := d.Exited(0); exited {
				tb.Fatalf("%s exited (%v) while waiting for %s:\n%s", d.Name, exit, what, k.log(d.Name))
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not ready after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// daemon returns the daemon name, nil when it was not started.
func (k *Cluster) daemon(name string) *stack.Daemon {
	for _, d := range k.daemons {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// running reports whether the daemon name was started and has not exited.
func (k *Cluster) running(name string) bool {
	d := k.daemon(name)
	if d == nil {
		return false
	}
	exited, _ := d.Exited(0)
	return !exited
}

// log returns the tail of the log of the daemon name.
func (k *Cluster) log(name string) string {
	for _, d := range k.daemons {
		if d.Name == name {
			return d.Log(8000)
		}
	}
	return ""
}

// kubectlTimeout bounds one kubectl command: above the longest --timeout the tests give one.
const kubectlTimeout = 4 * time.Minute

// Kubectl runs kubectl as the admin in the private network namespace, with stdin when not nil.
func (k *Cluster) Kubectl(stdin []byte, args ...string) (string, error) {
	// Bounded, so that a stuck apiserver or node proxy fails the test rather than hanging it
	// until go test's timeout, which skips the cleanups.
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(k.holder.Process.Pid), "-n", "--",
		k.bin["kubectl"], "--kubeconfig", filepath.Join(k.Dir, "pki", "admin.kubeconfig")}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}
