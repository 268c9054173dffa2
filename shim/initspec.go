package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// InitBinary is the name of graceful-init, looked up next to the shim's own binary.
const InitBinary = "graceful-init"

// InitMountPoint is where graceful-init appears inside a container. /dev is the tmpfs that the
// runtime creates for every container, so the path never clashes with image content and needs no
// writable rootfs, no shell and no /sbin in the image; the file keeps its name, so that ps shows
// init as graceful-init.
const InitMountPoint = "/dev/.graceful/graceful-init"

// initCopyName is the per-bundle copy of graceful-init that is mounted into the container. The
// container runs this copy, read-only, and never the host binary: even a write that got through
// would change only the copy (the class of CVE-2019-5736, where runc's own binary was overwritten
// through /proc/self/exe).
const initCopyName = ".graceful-init"

// defaultInitPath is graceful-init next to the running shim binary.
func defaultInitPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the shim's own binary: %w", err)
	}
	return filepath.Join(filepath.Dir(exe), InitBinary), nil
}

// wrapWithInit makes graceful-init the PID 1 of the container whose bundle is bundle: a private
// copy of initPath is bind-mounted read-only at InitMountPoint, and process.args becomes
// [InitMountPoint, "--", original args...]. Everything else in the spec (env, cwd, user, rlimits,
// terminal, unknown fields) is kept as it is.
func wrapWithInit(bundle, initPath string) error {
	if initPath == "" {
		var err error
		if initPath, err = defaultInitPath(); err != nil {
			return err
		}
	}
	copyPath := filepath.Join(bundle, initCopyName)
	if err := copyInit(initPath, copyPath); err != nil {
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
	return writeFileAtomic(specPath, out, 0o644)
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
	proc["args"] = append([]any{InitMountPoint, "--"}, args...)
	mounts, _ := spec["mounts"].([]any)
	spec["mounts"] = append(mounts, map[string]any{
		"destination": InitMountPoint,
		"type":        "bind",
		"source":      source,
		"options":     []any{"bind", "ro", "nosuid", "nodev"},
	})
	return json.Marshal(spec)
}

// copyInit copies the graceful-init binary at src to dst, read-only and executable for every
// user (the container may run as any uid).
func copyInit(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("init: graceful-init binary: %w (install it next to the shim, or set init_path)", err)
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("init: graceful-init binary %s is not a regular file", src)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".graceful-init-*")
	if err != nil {
		return fmt.Errorf("init: copy graceful-init into the bundle: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("init: copy graceful-init into the bundle: %w", err)
	}
	if err := tmp.Chmod(0o555); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
