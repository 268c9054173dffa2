package process

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// freshTableEnv marks a test binary run only to test ReserveDescriptors with a fresh table.
const freshTableEnv = "GRACEFUL_TEST_FRESH_FD_TABLE"

// fdSize is the size of the calling process's descriptor table (FDSize in /proc/self/status).
func fdSize(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "FDSize:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("FDSize: %q", v)
			}
			return n
		}
	}
	t.Fatal("no FDSize in /proc/self/status")
	return 0
}

// openFrom lists the open descriptors numbered from or above min.
func openFrom(t *testing.T, min int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= min {
			fds = append(fds, fd)
		}
	}
	return fds
}

func TestReserveDescriptorsSizesTheTableAndLeavesNothingOpen(t *testing.T) {
	if os.Getenv(freshTableEnv) == "" && fdSize(t) >= 4096 {
		// An earlier run (-count) has grown this binary's table, which never shrinks: run in a
		// fresh process, whose table is as small as a shim's at its start.
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), freshTableEnv+"=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("in a fresh process: %v\n%s", err, out)
		}
		return
	}
	// Beyond what the test binary's table holds already (it never shrinks).
	n := max(4096, 4*fdSize(t))
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < uint64(2*n) {
		t.Fatalf("RLIMIT_NOFILE %d (%v): the test needs %d", lim.Cur, err, 2*n)
	}
	ReserveDescriptors(n)
	if got := fdSize(t); got < n {
		t.Fatalf("FDSize %d after ReserveDescriptors(%d)", got, n)
	}
	if left := openFrom(t, n/2); len(left) > 0 {
		t.Fatalf("descriptors %v left open by ReserveDescriptors(%d)", left, n)
	}
	// A descriptor in use where the reservation lands is left alone.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	high, err := unix.FcntlInt(r.Fd(), unix.F_DUPFD_CLOEXEC, 2*n-1)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(high)
	ReserveDescriptors(2 * n)
	var st unix.Stat_t
	if err := unix.Fstat(high, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Fatalf("descriptor %d, a pipe, after ReserveDescriptors(%d): %v, mode %o", high, 2*n, err, st.Mode)
	}
	if left := openFrom(t, n/2); len(left) != 1 || left[0] != high {
		t.Fatalf("descriptors %v open after ReserveDescriptors(%d), want only %d", left, 2*n, high)
	}
}
