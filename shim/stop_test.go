package shim

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// scriptedRunner ends its stop with report, then runs after (an abort, say).
type scriptedRunner struct {
	report *process.Report
	after  func(s *stop)
}

func (f scriptedRunner) finish(s *stop) *process.Report {
	if f.after != nil {
		f.after(s)
	}
	return f.report
}

func (scriptedRunner) close() {}

// A stop's report says it was aborted by SIGKILL only when the abort cut its drain (or came
// before there was one), not when the task's Delete lands just after init was released.
func TestStopReportsAnAbortOnlyWhenItCutTheDrain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		report  *process.Report
		abort   bool
		aborted bool
	}{
		{"drain over, then Delete", &process.Report{}, true, false},
		{"drain cut by SIGKILL", &process.Report{Cancelled: true}, true, true},
		{"SIGKILL before any drain", nil, true, true},
		{"no abort", &process.Report{}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStop("c", nil, unix.SIGTERM, DefaultPolicy())
			published := make(chan struct{})
			close(published)
			s.exitPublished = published
			s.runner = scriptedRunner{report: tc.report, after: func(s *stop) {
				if tc.abort {
					s.abort()
				}
			}}
			r := s.finish()
			if got := slices.Contains(r.Notes, "stop aborted by SIGKILL"); got != tc.aborted {
				t.Fatalf("notes %q: aborted %v, want %v", r.Notes, got, tc.aborted)
			}
		})
	}
}

// startInit starts `sleep 60` as PID 1 of a new PID namespace: through unshare (so that its
// parent is unshare, as a recycled PID's process would not be the shim's child), or as the
// test binary's own child (as a container's init is the shim's).
func startInit(t *testing.T, viaUnshare bool) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if viaUnshare {
		cmd = exec.Command("unshare", "--pid", "--fork", "--kill-child", "sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if !viaUnshare {
		return cmd.Process.Pid
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		if f := strings.Fields(string(data)); len(f) == 1 {
			pid, _ := strconv.Atoi(f[0])
			if st, err := process.ReadStatus(pid); err == nil && st.Name == "sleep" {
				return pid
			}
		}
	}
	t.Fatal("unshare started no sleep")
	return 0
}

// A stop opens init only while the PID the runc service gave is still its child: a PID that
// init's exit freed may by now be another process's, another container's init even, which must
// never be drained. Here the other container's init is a PID namespace's PID 1 whose parent is
// not the shim (the test binary): refused; one whose parent is, accepted.
func TestStopRefusesAnInitThatIsNotTheShimsChild(t *testing.T) {
	other := startInit(t, true)
	s := newStop("c", nil, unix.SIGTERM, DefaultPolicy())
	if err := s.open(other); err == nil || !strings.Contains(err.Error(), "not this shim's child") {
		s.close()
		t.Fatalf("open(%d), another namespace's init, not the shim's child: %v, want refused", other, err)
	}
	own := startInit(t, false)
	s = newStop("c", nil, unix.SIGTERM, DefaultPolicy())
	if err := s.open(own); err != nil {
		t.Fatalf("open(%d), the shim's own child: %v", own, err)
	}
	s.close()
}

// startedInit starts cmd as a stand-in init and opens its pidfd (before it can be reaped).
func startedInit(t *testing.T, name string, args ...string) (*exec.Cmd, *process.Handle) {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h, err := process.Open(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		h.Close()
	})
	return cmd, h
}

// Once init has exited, the report waits for its exit event past reportDelay: the runc service
// of a loaded machine can be slow to publish it, and the report must not go first.
func TestReportWaitsForALateExitEventOnceInitHasExited(t *testing.T) {
	cmd, h := startedInit(t, "true")
	cmd.Wait()
	s := newStop("c", nil, unix.SIGTERM, DefaultPolicy())
	s.init = h
	published := make(chan struct{})
	s.exitPublished = published
	go func() {
		time.Sleep(reportDelay + 300*time.Millisecond) // the late exit event
		close(published)
	}()
	s.awaitExitEvent()
	select {
	case <-published:
	default:
		t.Fatal("the report went before the exit event of an init that had exited")
	}
}

// An init that lives on has no exit event coming: the report waits reportDelay only.
func TestReportDoesNotWaitLongerForAnInitThatLivesOn(t *testing.T) {
	_, h := startedInit(t, "sleep", "60")
	s := newStop("c", nil, unix.SIGTERM, DefaultPolicy())
	s.init = h
	s.exitPublished = make(chan struct{})
	start := time.Now()
	s.awaitExitEvent()
	if took := time.Since(start); took >= 3*reportDelay {
		t.Errorf("the report waited %v for the exit event of a running init, want about %v", took, reportDelay)
	}
}
