package helper

import (
	"bufio"
	"fmt"
	"io"
	"os/signal"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/procfs"
)

// SignallerArg is the argument (graceful-hold -signal-all NS) that runs SignallerMain.
const SignallerArg = "-signal-all"

// Signaller messages, one per line on its standard output.
const (
	// SignallerReady: the signaller runs in the namespace it was asked for.
	SignallerReady = "ready"
	// Signalled: "signalled FROM TO", when the kill(-1) of the request just carried out ran.
	Signalled = "signalled"
)

// SignallerMain runs a signaller (graceful-hold -signal-all NS). It first checks that it is in the
// PID namespace of inode NS, so kill(-1) never runs in the host's, then reads signal numbers from
// in and answers on out with Failed, or Signalled and returns: it must be gone before the
// namespace's init can finish exiting. It makes itself non-dumpable (the container sees it in
// /proc) and ignores the signals a container's own shutdown (kill -TERM -1) would send it.
func SignallerMain(args []string, in io.Reader, out io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintf(out, "%s usage: graceful-hold %s NS\n", Failed, SignallerArg)
		return 2
	}
	want, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		fmt.Fprintf(out, "%s want a namespace inode, got %q\n", Failed, args[0])
		return 2
	}
	if err := inNamespace(want); err != nil {
		fmt.Fprintf(out, "%s %v\n", Failed, err)
		return 1
	}
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPIPE)
	raiseHelperPriority()
	fmt.Fprintln(out, SignallerReady)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		n, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil || n <= 0 || n >= 65 {
			fmt.Fprintf(out, "%s want a signal number, got %q\n", Failed, sc.Text())
			continue
		}
		from, to, err := signalAll(unix.Signal(n))
		if err != nil {
			fmt.Fprintf(out, "%s %v\n", Failed, err)
			continue
		}
		fmt.Fprintf(out, "%s %d %d\n", Signalled, from, to)
		return 0
	}
	return 0
}

// inNamespace checks that the caller is in the PID namespace with inode want, and that this is
// nested in the PID namespace of the caller's /proc (the host's, or the shim's): never that one.
func inNamespace(want uint64) error {
	own, err := procfs.NSInode("/proc/thread-self/ns/pid")
	if err != nil {
		return err
	}
	if own != want {
		return fmt.Errorf("in PID namespace %d, not %d", own, want)
	}
	// Through thread-self: /proc, the host's, would take the namespace-local PID for another.
	st, err := procfs.ReadStatusFile("/proc/thread-self/status")
	if err != nil {
		return err
	}
	if len(st.NSpid) < 2 {
		return fmt.Errorf("PID namespace %d is that of /proc: refusing to signal every process in it", own)
	}
	return nil
}

// signalAll is kill(-1, sig) then SIGCONT, timed in CLOCK_MONOTONIC ns (the fork watch's clock).
func signalAll(sig unix.Signal) (from, to int64, err error) {
	from = monotonicNow()
	err = kill(-1, sig)
	if err == nil && sig != unix.SIGKILL && sig != unix.SIGCONT {
		// As for a single member: a stopped process only acts on the signal once continued.
		err = kill(-1, unix.SIGCONT)
	}
	return from, monotonicNow(), err
}

// kill is kill(2), where ESRCH (nothing to signal) is no error.
func kill(pid int, sig unix.Signal) error {
	if err := unix.Kill(pid, sig); err != nil && err != unix.ESRCH {
		return fmt.Errorf("kill(%d, %s): %w", pid, signalName(sig), err)
	}
	return nil
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// ParseSignalled reads one answer of a signaller: when its kill(-1) ran (see signalAll).
func ParseSignalled(line string) (from, to int64, err error) {
	if msg, ok := strings.CutPrefix(line, Failed); ok {
		return 0, 0, fmt.Errorf("signaller: %s", strings.TrimSpace(msg))
	}
	if _, err := fmt.Sscanf(line, Signalled+" %d %d", &from, &to); err != nil {
		return 0, 0, fmt.Errorf("signaller: unexpected answer %q", line)
	}
	return from, to, nil
}

// signalName is sig's name, or its number for one unix.SignalName does not name (real-time).
func signalName(sig unix.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return "signal " + strconv.Itoa(int(sig))
}
