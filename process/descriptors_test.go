package process

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

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
