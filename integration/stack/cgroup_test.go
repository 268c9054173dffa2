package stack

import (
	"strings"
	"testing"
)

// checkUnified accepts a container in its own unified cgroup whose v1 hierarchies are its shim's
// (what runc does when /sys/fs/cgroup is cgroup2 on a host that keeps v1 hierarchies), and
// refuses what runc does in v1 hybrid mode (the container's cgroup in every v1 hierarchy too) and
// a container left in the root or its shim's unified cgroup.
func TestCheckUnified(t *testing.T) {
	const id = "c1"
	shimV1 := "9:name=systemd:/\n8:pids:/\n4:memory:/slice/x\n1:cpu:/\n"
	for _, tc := range []struct {
		name, data string
		ok         bool
	}{
		{"unified", shimV1 + "0::/graceful-test/c1\n", true},
		{"unified-only", "0::/graceful-cri-1/c1\n", true},
		{"v1-hybrid", "9:name=systemd:/graceful-test/c1\n8:pids:/graceful-test/c1\n0::/graceful-test/c1\n", false},
		{"v1-only", "8:pids:/graceful-test/c1\n1:cpu:/graceful-test/c1\n0::/\n", false},
		{"root", shimV1 + "0::/\n", false},
		{"other-container", shimV1 + "0::/graceful-test/c10\n", false},
		{"malformed", "garbage\n", false},
	} {
		err := checkUnified(tc.data, id)
		if (err == nil) != tc.ok {
			t.Errorf("%s: checkUnified(%q) = %v, want ok=%v", tc.name, strings.TrimSpace(tc.data), err, tc.ok)
		}
	}
}
