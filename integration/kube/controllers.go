package kube

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Ports of the controllers' /healthz (their defaults), on 127.0.0.1 of the private namespace.
const (
	controllerManagerPort = "10257"
	schedulerPort         = "10259"
)

// controllers are kube-controller-manager's controllers that the cluster runs (v1.37 names, see
// its --help): DaemonSets and their pods (the garbage collector deletes the pods of a deleted
// DaemonSet, and its ControllerRevisions), each namespace's default service account and its
// kube-root-ca.crt, which a pod's service-account token volume needs.
var controllers = []string{
	"daemonset-controller",
	"serviceaccount-controller",
	"root-ca-certificate-publisher-controller",
	"garbage-collector-controller",
}

// startControllerManager starts kube-controller-manager as the admin, without leader election,
// serving its /healthz on 127.0.0.1 of the private namespace only, and waits until it answers.
func (k *Cluster) startControllerManager(tb testing.TB) {
	tb.Helper()
	pki := filepath.Join(k.Dir, "pki")
	k.startDaemon(tb, "kube-controller-manager",
		"--kubeconfig="+filepath.Join(pki, "admin.kubeconfig"),
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false", "--use-service-account-credentials=false",
		"--root-ca-file="+filepath.Join(pki, "ca.crt"),
		"--bind-address=127.0.0.1", "--secure-port="+controllerManagerPort, "--profiling=false")
	k.waitHealthz(tb, "kube-controller-manager", controllerManagerPort)
}

// startScheduler starts kube-scheduler (configuration file: the admin's kubeconfig, no leader
// election), serving its /healthz on 127.0.0.1 of the private namespace only, and waits until
// it answers.
func (k *Cluster) startScheduler(tb testing.TB) {
	tb.Helper()
	k.startDaemon(tb, "kube-scheduler", "--config="+filepath.Join(k.Dir, "scheduler-config.yaml"),
		"--bind-address=127.0.0.1", "--secure-port="+schedulerPort)
	k.waitHealthz(tb, "kube-scheduler", schedulerPort)
}

// waitHealthz waits until https://127.0.0.1:port/healthz of the private namespace answers ok
// (the daemon's self-signed certificate is not checked).
func (k *Cluster) waitHealthz(tb testing.TB, name, port string) {
	tb.Helper()
	transport := &http.Transport{
		DialContext:     k.dialPrivate,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	k.waitFor(tb, name+"'s /healthz", 120*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:"+port+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		return nil
	})
}
