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

func TestReserveDescriptorsSizesTheTableForADrainAndLeavesNothingOpen(t *testing.T) {
	const n = 4096 // beyond DrainDescriptors: a test binary may have grown its table already
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < n {
		t.Fatalf("RLIMIT_NOFILE %d (%v): the test needs %d", lim.Cur, err, n)
	}
	if got := fdSize(t); got >= n {
		t.Fatalf("FDSize is %d already: the test cannot tell", got)
	}
	before, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	ReserveDescriptors(n)
	if got := fdSize(t); got < n {
		t.Fatalf("FDSize %d after ReserveDescriptors(%d)", got, n)
	}
	after, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d descriptors open before, %d after: ReserveDescriptors leaked one", len(before), len(after))
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
}
