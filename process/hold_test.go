package process

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const holderEnv = "GRACEFUL_TEST_HOLDER_PID"

func TestMain(m *testing.M) {
	if pid := os.Getenv(holderEnv); pid != "" {
		n, _ := strconv.Atoi(pid)
		if err := RunHolder(n, os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The holder keeps a namespace's init in its exit while the rest of the namespace is drained;
// release lets it finish.
func TestHolderHoldsInitWhileTheRestDrains(t *testing.T) {
	dir := t.TempDir()
	ns := startNamespace(t, fmt.Sprintf(`sh -c 'trap "sleep 0.2; echo clean > %s/child; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
trap "exit 0" TERM
echo ready; while :; do sleep 0.05; done`, dir))
	ns.expect(t, "trapped")

	holder := exec.Command("/proc/self/exe")
	holder.Env = append(os.Environ(), holderEnv+"="+strconv.Itoa(ns.init))
	release, _ := holder.StdinPipe()
	stdout, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	lines := bufio.NewScanner(stdout)
	next := func() string {
		if !lines.Scan() {
			return "EOF"
		}
		return strings.TrimSpace(lines.Text())
	}
	if got := next(); got != HoldAttached {
		t.Fatalf("holder said %q, want %q", got, HoldAttached)
	}
	syscall.Kill(ns.init, syscall.SIGTERM)
	if got := next(); got != HoldExiting {
		t.Fatalf("holder said %q, want %q", got, HoldExiting)
	}
	scope, err := ScopeOf(ns.init)
	if err != nil {
		t.Fatal(err)
	}
	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, Grace: 5 * time.Second})
	if got := readMarker(t, filepath.Join(dir, "child")); got != "clean" {
		t.Fatalf("child did not finish its cleanup while init was held: %+v", report.Processes)
	}
	h, err := Open(ns.init)
	if err != nil {
		t.Fatalf("init gone while held: %v", err)
	}
	defer h.Close()
	fmt.Fprintln(release, "release")
	fds := []unix.PollFd{{Fd: int32(h.Fd()), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, 5000); n != 1 {
		t.Fatal("init did not finish exiting after release")
	}
	if err := holder.Wait(); err != nil {
		t.Fatalf("holder: %v", err)
	}
}
