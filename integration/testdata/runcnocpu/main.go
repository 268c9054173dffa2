// Command runcnocpu is runc for the cgroup v2 test mode (make test-cgroup2): it removes the CPU and
// memory resources from the bundle's config.json of a `create` or `run`, then executes the real
// runc, named by the symlink next to it (its own path + ".real"), with the same arguments.
//
// In that mode a cgroup2 hierarchy is mounted over /sys/fs/cgroup in a private mount namespace
// while the host keeps its v1 hierarchies: the cpu and memory controllers stay bound to v1, and
// runc fails to write cpu.weight. containerd's CRI plugin gives every pod sandbox CPU shares, which
// no CRI request can take away; this wrapper does.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	real := self + ".real"
	if bundle, ok := bundleOf(os.Args[1:]); ok {
		if err := strip(filepath.Join(bundle, "config.json")); err != nil {
			fail(err)
		}
	}
	fail(syscall.Exec(real, append([]string{real}, os.Args[1:]...), os.Environ()))
}

// bundleOf returns the --bundle (-b) of a create or run command line; the bundle defaults to the
// working directory.
func bundleOf(args []string) (string, bool) {
	cmd := -1
	for i, a := range args {
		if a == "create" || a == "run" {
			cmd = i
			break
		}
	}
	if cmd < 0 {
		return "", false
	}
	for i := cmd + 1; i < len(args); i++ {
		switch a := args[i]; {
		case (a == "--bundle" || a == "-b") && i+1 < len(args):
			return args[i+1], true
		case len(a) > 9 && a[:9] == "--bundle=":
			return a[9:], true
		}
	}
	return ".", true
}

// strip removes linux.resources.cpu and linux.resources.memory from the OCI spec at path, keeping
// every other field as it is.
func strip(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var linux map[string]json.RawMessage
	if raw, ok := spec["linux"]; !ok || json.Unmarshal(raw, &linux) != nil {
		return nil
	}
	var resources map[string]json.RawMessage
	if raw, ok := linux["resources"]; !ok || json.Unmarshal(raw, &resources) != nil {
		return nil
	}
	_, cpu := resources["cpu"]
	_, memory := resources["memory"]
	if !cpu && !memory {
		return nil
	}
	delete(resources, "cpu")
	delete(resources, "memory")
	if linux["resources"], err = json.Marshal(resources); err != nil {
		return err
	}
	if spec["linux"], err = json.Marshal(linux); err != nil {
		return err
	}
	if data, err = json.Marshal(spec); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "runcnocpu:", err)
	os.Exit(1)
}
