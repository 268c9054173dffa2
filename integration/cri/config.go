package cri

import (
	"fmt"
	"path/filepath"
	"time"
)

// PauseImage is the sandbox (pause) image: the test image with an entrypoint.
const PauseImage = "docker.io/graceful/pause:latest"

// Grace periods of the handlers' options, all distinct, so that a stop's duration shows which
// configuration the shim applied.
const (
	pathGrace     = 1500 * time.Millisecond // handler "graceful": options ConfigPath
	inlineGrace   = 1200 * time.Millisecond // handler "graceful-inline": options table as ConfigBody
	defaultsGrace = 800 * time.Millisecond  // the defaults file (GRACEFUL_CONFIG_FILE), for "graceful-runcpath"
	initGrace     = 1100 * time.Millisecond // handler "graceful-init": init = true inline
)

// Handler is a CRI runtime handler of the daemon and the grace period its configuration gives.
type Handler struct {
	Name  string
	Grace time.Duration
	// Shim is the binary that must serve the handler's pods (set by Start).
	Shim string
	// Init: the handler's options run every container under graceful-init.
	Init bool
}

// handlers are the graceful handlers of the daemon's configuration (daemonConfig).
func handlers() []*Handler {
	return []*Handler{
		// runtime_type io.containerd.graceful.v2, options { ConfigPath = graceful.toml }.
		{Name: "graceful", Grace: pathGrace},
		// runtime_type io.containerd.graceful.v2, the graceful keys inline in the options table:
		// CRI passes a table without ConfigPath whole, as runtimeoptions.v1.Options.ConfigBody.
		{Name: "graceful-inline", Grace: inlineGrace},
		// runtime_type io.containerd.runc.v2 with runtime_path = the graceful shim and runc
		// options: the runc options pass through, graceful settings come from the defaults file
		// and annotations.
		{Name: "graceful-runcpath", Grace: defaultsGrace},
		// runtime_type io.containerd.graceful.v2 with init = true inline: every container of the
		// handler's pods (a RuntimeClass graceful-init) runs under graceful-init.
		{Name: "graceful-init", Grace: initGrace, Init: true},
	}
}

// daemonConfig is the daemon's CRI configuration (appended to the stack's config.toml, version 3);
// cniBinDir is where the CNI plugins are (a missing directory for host-network pods only).
func daemonConfig(dir, shim, runc, configPath, cniBinDir string, noHandlers bool) string {
	annotations := `
      pod_annotations = ['io.containerd.graceful.v2.*']
      container_annotations = ['io.containerd.graceful.v2.*', 'io.kubernetes.pod.terminationGracePeriod']`
	config := fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[1]q

[plugins.'io.containerd.cri.v1.runtime']
  # This host lacks CAP_SYS_RESOURCE: no oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces (critest's pods) are mounted below the daemon's state, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    # Host-network pods only unless a test writes a conflist (critest); keep the conf dir private.
    bin_dirs = [%[2]q]
    conf_dir = %[3]q
`, PauseImage, cniBinDir, filepath.Join(dir, "cni", "net.d"))
	if noHandlers {
		return config
	}
	return config + fmt.Sprintf(`  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful]
      runtime_type = 'io.containerd.graceful.v2'%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful.options]
        ConfigPath = %[2]q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-inline]
      runtime_type = 'io.containerd.graceful.v2'%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-inline.options]
        grace_period = %[3]q
        BinaryName = %[4]q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-init]
      runtime_type = 'io.containerd.graceful.v2'%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-init.options]
        init = true
        grace_period = %[6]q
        BinaryName = %[4]q
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-runcpath]
      runtime_type = 'io.containerd.runc.v2'
      runtime_path = %[5]q%[1]s
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-runcpath.options]
        BinaryName = %[4]q
`, annotations, configPath, inlineGrace.String(), runc, shim, initGrace.String())
}
