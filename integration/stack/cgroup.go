package stack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Cgroup2 reports whether /sys/fs/cgroup is a cgroup v2 (unified) hierarchy, as runc and
// containerd decide it.
func Cgroup2() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// Cgroup2Required reports whether the run must be in unified mode (GRACEFUL_CGROUP2=1, set by make
// test-cgroup2): the stack then refuses to start otherwise, and checks every container it starts.
func Cgroup2Required() bool {
	return os.Getenv("GRACEFUL_CGROUP2") == "1"
}

// WithoutCPUAndMemory removes the CPU and memory resources from a spec. make test-cgroup2 mounts a
// cgroup2 hierarchy over /sys/fs/cgroup while the host keeps its v1 hierarchies, so the cpu and
// memory controllers are not available there (only hugetlb is), and runc would fail to set them.
func WithoutCPUAndMemory(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	if s.Linux != nil && s.Linux.Resources != nil {
		s.Linux.Resources.CPU = nil
		s.Linux.Resources.Memory = nil
	}
	return nil
}

// CheckUnified returns an error unless process pid, the init of container id, runs in cgroup v2
// unified mode: its unified ("0::") cgroup is the container's own (a path ending in /id) and none
// of its cgroup v1 hierarchies has a cgroup of the container (runc created none there).
func CheckUnified(pid int, id string) error {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return err
	}
	return checkUnified(string(data), id)
}

func checkUnified(data, id string) error {
	unified := ""
	for _, line := range strings.Split(strings.TrimSpace(data), "\n") {
		hierarchy, path, ok := cutLast(line)
		if !ok {
			return fmt.Errorf("container %s: malformed cgroup line %q", id, line)
		}
		if hierarchy == "0:" {
			unified = path
			continue
		}
		if strings.Contains(path, id) {
			return fmt.Errorf("container %s is in a cgroup v1 hierarchy (%q), not in unified mode; its cgroups:\n%s", id, line, data)
		}
	}
	if !strings.HasSuffix(unified, "/"+id) {
		return fmt.Errorf("container %s: unified cgroup %q is not the container's own, not in unified mode; its cgroups:\n%s", id, unified, data)
	}
	return nil
}

// cutLast splits a /proc/PID/cgroup line "ID:controllers:path" into "ID:controllers" and path.
func cutLast(line string) (string, string, bool) {
	i := strings.IndexByte(line, ':')
	if i < 0 {
		return "", "", false
	}
	j := strings.IndexByte(line[i+1:], ':')
	if j < 0 {
		return "", "", false
	}
	return line[:i+1+j], line[i+2+j:], true
}

// BuildRuncNoCPU builds the runc wrapper for unified mode (integration/testdata/runcnocpu) into
// dir, next to a symlink to the stack's runc, and returns its path: a runtime's BinaryName where
// containerd itself puts CPU resources into a spec (a CRI pod sandbox's CPU shares).
func BuildRuncNoCPU(dir string) (string, error) {
	out := filepath.Join(dir, "runc-nocpu")
	if err := buildGo(out, "./integration/testdata/runcnocpu", false); err != nil {
		return "", err
	}
	os.Remove(out + ".real")
	if err := os.Symlink(filepath.Join(StackDir(), "bin", "runc"), out+".real"); err != nil {
		return "", err
	}
	return out, nil
}

// RemoveCgroup removes the cgroup parent (a pod's or a daemon's cgroup parent, which runc leaves
// once it removed the containers' cgroups below it) in every hierarchy.
func RemoveCgroup(parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	if d := filepath.Join("/sys/fs/cgroup", parent); isDir(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		unix.Rmdir(d)
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
