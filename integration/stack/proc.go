package stack

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/graceful-shim/graceful/process"
)

// Children lists the children of pid whose one-letter state (R, S, Z, ... as in
// /proc/PID/status) keep accepts.
func Children(pid int, keep func(state byte) bool) []int {
	var children []int
	for _, n := range pids() {
		if st, err := process.ReadStatus(n); err == nil && st.PPid == pid && keep(st.State) {
			children = append(children, n)
		}
	}
	return children
}

// Zombie accepts the state of a zombie, for Children.
func Zombie(state byte) bool { return state == 'Z' }

// Alive accepts the state of any process but a zombie, for Children.
func Alive(state byte) bool { return state != 'Z' }

// Shims lists the containerd shim processes whose command line (its arguments separated by NULs)
// contains every one of parts.
func Shims(parts ...string) []int {
	var shims []int
	for _, pid := range pids() {
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("containerd-shim")) || !containsAll(cmdline, parts) {
			continue
		}
		shims = append(shims, pid)
	}
	return shims
}

func containsAll(data []byte, parts []string) bool {
	for _, p := range parts {
		if !bytes.Contains(data, []byte(p)) {
			return false
		}
	}
	return true
}

// pids lists the host's processes.
func pids() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// MountsUnder lists the mount points below dir, deepest first.
func MountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var targets []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			targets = append(targets, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(targets)))
	return targets
}
