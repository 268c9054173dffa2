package kube

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/graceful-shim/graceful/integration/stack"
)

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 controllers, named, unified).
func cgroupMounts() []string {
	data, _ := os.ReadFile("/proc/self/mounts")
	var dirs []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			dirs = append(dirs, f[1])
		}
	}
	return dirs
}

// makeCgroupRoot creates the kubelet's cgroupRoot in every hierarchy (v1 cpuset needs its cpus and
// mems before a task can join).
func makeCgroupRoot(root string) error {
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if data, err := os.ReadFile(filepath.Join(m, f)); err == nil && !stack.Cgroup2() {
				if err := os.WriteFile(filepath.Join(d, f), data, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

// CgroupTreeProcs lists the processes in root's cgroup tree, in any hierarchy.
func CgroupTreeProcs(root string) []int {
	var pids []int
	for _, m := range cgroupMounts() {
		filepath.Walk(filepath.Join(m, root), func(p string, info os.FileInfo, err error) error {
			if err != nil || info.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupTree removes root's cgroup tree, deepest first, in every hierarchy, and returns the
// cgroups it could not remove.
func removeCgroupTree(root string) []string {
	var left []string
	for _, m := range cgroupMounts() {
		var dirs []string
		filepath.Walk(filepath.Join(m, root), func(p string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil {
				left = append(left, dirs[i])
			}
		}
	}
	return left
}
