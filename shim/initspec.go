package shim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/graceful-shim/graceful/initproc"
)

// InitBinary is the name of graceful-init, looked up next to the shim's own binary.
const InitBinary = "graceful-init"

// InitMountPoint is where graceful-init appears inside a container. /dev is the tmpfs that the
// runtime creates for every container, so the path never clashes with image content and needs no
// writable rootfs, no shell and no /sbin in the image; the file keeps its name, so that ps shows
// init as graceful-init.
const InitMountPoint = "/dev/.graceful/graceful-init"

// InitCopyDir holds the copies of graceful-init that containers run, one per binary content
// (named by its SHA-256), on the host's disk and reachable by root only. A container runs such a
// copy through a read-only bind mount, never the host binary: even a write that got through (a
// privileged container can remount) would change the copy only, which the next Create checks and
// replaces (the class of CVE-2019-5736, where runc's own binary was overwritten through
// /proc/self/exe). One copy serves every container, so its pages are clean and shared (a copy per
// bundle, in the tmpfs /run, would cost each container its 1.5 MiB of text as dirty memory).
const InitCopyDir = "/var/lib/graceful-shim"

// defaultInitPath is graceful-init next to the running shim binary.
func defaultInitPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the shim's own binary: %w", err)
	}
	return filepath.Join(filepath.Dir(exe), InitBinary), nil
}

// wrapWithInit makes graceful-init the PID 1 of the container whose bundle is bundle: the copy of
// initPath in copyDir (see InitCopyDir) is bind-mounted read-only at InitMountPoint, and
// process.args becomes [InitMountPoint, initproc.ShimFlag, "--", original args...]. Everything else in the spec (env,
// cwd, user, rlimits, terminal, unknown fields) is kept as it is.
func wrapWithInit(bundle, initPath, copyDir string) error {
	if initPath == "" {
		var err error
		if initPath, err = defaultInitPath(); err != nil {
			return err
		}
	}
	copyPath, err := initCopy(initPath, copyDir)
	if err != nil {
		return err
	}
	specPath := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(specPath)
	if err != nil {
		return fmt.Errorf("read bundle spec: %w", err)
	}
	out, err := wrapSpec(data, copyPath)
	if err != nil {
		return err
	}
	return atomicWriteFile(specPath, out, 0o644)
}

// wrapSpec returns the OCI spec data with graceful-init (mounted from source) as PID 1.
func wrapSpec(data []byte, source string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // keep 64-bit values (rlimits, uids) exact
	var spec map[string]any
	if err := dec.Decode(&spec); err != nil {
		return nil, fmt.Errorf("parse bundle spec: %w", err)
	}
	proc, _ := spec["process"].(map[string]any)
	if proc == nil {
		return nil, errors.New("init: the spec has no process to run under graceful-init")
	}
	args, _ := proc["args"].([]any)
	if len(args) == 0 {
		return nil, errors.New("init: the spec's process.args is empty: there is no main process to run under graceful-init")
	}
	if first, _ := args[0].(string); first == InitMountPoint {
		return data, nil // already wrapped
	}
	// The shim drains the container when the main process exits (see mainwatch.go), so
	// graceful-init is told to leave that to it.
	proc["args"] = append([]any{InitMountPoint, initproc.ShimFlag, "--"}, args...)
	mounts, _ := spec["mounts"].([]any)
	spec["mounts"] = append(mounts, map[string]any{
		"destination": InitMountPoint,
		"type":        "bind",
		"source":      source,
		"options":     []any{"bind", "ro", "nosuid", "nodev"},
	})
	return json.Marshal(spec)
}

// initCopy returns the copy of the graceful-init binary src in dir, making it (or replacing one
// that changed) when needed: read-only and executable for every user (the container may run as
// any uid), written to disk before it is used, so that its pages are clean.
func initCopy(src, dir string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("init: graceful-init binary: %w (install it next to the shim, or set init_path)", err)
	}
	sum := sha256.Sum256(data)
	dst := filepath.Join(dir, "graceful-init-"+hex.EncodeToString(sum[:]))
	if have, err := os.ReadFile(dst); err == nil && sha256.Sum256(have) == sum {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("init: %w", err)
	}
	// Written (and synced) to a temporary file, then renamed: a running container keeps the old
	// copy, and no container ever sees a partial one.
	if err := atomicWriteFile(dst, data, 0o555); err != nil {
		return "", fmt.Errorf("init: copy graceful-init to %s: %w", dir, err)
	}
	return dst, nil
}
