package kube

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/graceful-shim/graceful/integration/cri"
	"github.com/graceful-shim/graceful/integration/stack"
)

// CAFile is the cluster CA's certificate (PEM), which signed the apiserver's serving certificate.
func (k *Cluster) CAFile() string { return filepath.Join(k.Dir, "pki", "ca.crt") }

// Apply runs kubectl apply with manifest (YAML or JSON, any number of objects), failing tb on an
// error.
func (k *Cluster) Apply(tb testing.TB, manifest []byte) {
	tb.Helper()
	if out, err := k.Kubectl(manifest, "apply", "-f", "-"); err != nil {
		tb.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// ImportImage imports an image archive (OCI or docker save format, one image) into the CRI
// containerd's k8s.io namespace, unpacked for its snapshotter, and waits until CRI sees it; pods
// with imagePullPolicy Never or IfNotPresent run it. It returns the image's name.
func (k *Cluster) ImportImage(tb testing.TB, archive io.Reader) string {
	tb.Helper()
	ctx, cancel := cri.Context()
	defer cancel()
	img, err := k.CRI.Stack.ImportInto(ctx, stack.CRINamespace, archive)
	if err != nil {
		tb.Fatal(err)
	}
	k.images = append(k.images, img.Name())
	k.waitFor(tb, "CRI to see image "+img.Name(), 30*time.Second, k.criSeesImages)
	return img.Name()
}

// ImportImageFile is ImportImage with the archive at path.
func (k *Cluster) ImportImageFile(tb testing.TB, path string) string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	return k.ImportImage(tb, f)
}

// criSeesImages checks that CRI answers and sees the images ImportImage imported.
func (k *Cluster) criSeesImages() error {
	ctx, cancel := cri.Context()
	defer cancel()
	for _, name := range k.images {
		resp, err := k.CRI.Images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
		if err != nil {
			return err
		}
		if resp.GetImage() == nil {
			return fmt.Errorf("CRI does not see image %s", name)
		}
	}
	return nil
}

// WaitDaemonSetReady waits until the DaemonSet namespace/name is rolled out: its controller saw
// its last generation, and every pod it should run (one at least) is up to date and Ready.
func (k *Cluster) WaitDaemonSetReady(tb testing.TB, namespace, name string, timeout time.Duration) {
	tb.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for {
		out, err := k.Kubectl(nil, "get", "daemonset", "-n", namespace, name, "-o",
			"jsonpath={.metadata.generation} {.status.observedGeneration} {.status.desiredNumberScheduled} {.status.updatedNumberScheduled} {.status.numberReady}")
		if err == nil {
			last = out
			var n [5]int
			for i, f := range strings.Fields(out) {
				if i < len(n) {
					n[i], _ = strconv.Atoi(f)
				}
			}
			gen, observed, desired, updated, ready := n[0], n[1], n[2], n[3], n[4]
			if observed >= gen && desired >= 1 && updated == desired && ready == desired {
				return
			}
		} else {
			last = fmt.Sprintf("%v: %s", err, out)
		}
		for _, d := range k.daemons {
			if exited, exit := d.Exited(0); exited {
				tb.Fatalf("%s exited (%v) while waiting for DaemonSet %s/%s:\n%s", d.Name, exit, namespace, name, k.log(d.Name))
			}
		}
		if time.Now().After(deadline) {
			desc, _ := k.Kubectl(nil, "describe", "daemonset", "-n", namespace, name)
			pods, _ := k.Kubectl(nil, "describe", "pods", "-n", namespace)
			tb.Fatalf("DaemonSet %s/%s not ready after %v (generation, observed, desired, updated, ready: %s):\n%s\n%s",
				namespace, name, timeout, last, desc, pods)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// NodeReady reports whether the node's Ready condition is True.
func (k *Cluster) NodeReady() (bool, error) {
	out, err := k.Kubectl(nil, "get", "node", node, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	if err != nil {
		return false, fmt.Errorf("%v: %s", err, out)
	}
	return strings.TrimSpace(out) == "True", nil
}

// runningPods lists the uids of the pods that the kubelet finds running, asking the runtime
// (its /runningpods/ endpoint, through the apiserver's node proxy): the kubelet answers from a
// runtime cache that it refreshes from CRI when over 2 s old.
func (k *Cluster) runningPods() ([]string, error) {
	out, err := k.Kubectl(nil, "get", "--raw", "/api/v1/nodes/"+node+"/proxy/runningpods/")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				UID string `json:"uid"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("the kubelet's running pods: %w: %s", err, out)
	}
	var uids []string
	for _, p := range list.Items {
		uids = append(uids, p.Metadata.UID)
	}
	return uids, nil
}

// livePods lists the uids of the pods in the API that are not being deleted.
func (k *Cluster) livePods() ([]string, error) {
	out, err := k.Kubectl(nil, "get", "pods", "-A", "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				UID               string  `json:"uid"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("the pods: %w", err)
	}
	var uids []string
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp == nil {
			uids = append(uids, p.Metadata.UID)
		}
	}
	return uids, nil
}

// leaseRenewed returns when the kubelet last renewed its node lease (every 10 s).
func (k *Cluster) leaseRenewed() (time.Time, error) {
	out, err := k.Kubectl(nil, "get", "lease", "-n", "kube-node-lease", node, "-o", "jsonpath={.spec.renewTime}")
	if err != nil {
		return time.Time{}, fmt.Errorf("%v: %s", err, out)
	}
	return time.Parse(time.RFC3339Nano, strings.TrimSpace(out))
}

// RestartContainerd restarts the CRI containerd (SIGKILL and start, as a node's restart does;
// the shims and the pods' containers run on) and waits until the cluster is whole again: CRI
// answers and sees the images, the kubelet still runs, has renewed its node lease since and
// finds every pod it ran before and that is not being deleted in the new containerd (a fresh CRI
// listing), and the node is Ready.
func (k *Cluster) RestartContainerd(tb testing.TB) {
	tb.Helper()
	before, err := k.runningPods()
	if err != nil {
		tb.Fatalf("the kubelet's running pods before the restart: %v", err)
	}
	start := time.Now()
	k.CRI.Restart(tb)
	back := time.Now()
	k.waitFor(tb, "the cluster after the containerd restart", 120*time.Second, func() error {
		if err := k.criSeesImages(); err != nil {
			return err
		}
		// Past the kubelet's 2 s runtime cache, its listing comes from the new containerd.
		if time.Since(back) < 2500*time.Millisecond {
			return fmt.Errorf("the kubelet's runtime cache may predate the restart")
		}
		uids, err := k.runningPods()
		if err != nil {
			return err
		}
		live, err := k.livePods()
		if err != nil {
			return err
		}
		for _, uid := range before {
			// A pod deleted meanwhile (a DaemonSet's rollout) is not expected back.
			if slices.Contains(live, uid) && !slices.Contains(uids, uid) {
				return fmt.Errorf("the kubelet does not find pod %s in the restarted containerd (it finds %v)", uid, uids)
			}
		}
		renewed, err := k.leaseRenewed()
		if err != nil {
			return err
		}
		if !renewed.After(back) {
			return fmt.Errorf("the kubelet has not renewed its node lease since the restart (last %v)", renewed)
		}
		if ready, err := k.NodeReady(); err != nil || !ready {
			return fmt.Errorf("node %s not Ready (%v)", node, err)
		}
		return nil
	})
	tb.Logf("containerd restarted in %v; cluster whole again after %v", back.Sub(start).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
