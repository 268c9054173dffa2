package initproc

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/internal/testguard"
)

// testVersion is the version the test binary is built with.
const testVersion = "v0.0.0-test"

// initBin is the graceful-init binary built for the tests (by TestMain).
var initBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "graceful-init-test-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		initBin, err = buildInit(dir)
		if err != nil {
			os.Stderr.WriteString("building graceful-init: " + err.Error() + "\n")
			return 1
		}
		return testguard.Main(m)
	}())
}

// buildInit builds graceful-init into dir with build.sh, as the Makefile does, and returns its
// path. The file is synced: freshly written pages of the binary would otherwise count as the
// process's dirty memory until they are written back.
func buildInit(dir string) (string, error) {
	bin := filepath.Join(dir, "graceful-init")
	if out, err := exec.Command("sh", "build.sh", bin, testVersion).CombinedOutput(); err != nil {
		return "", errors.New(err.Error() + ": " + string(out))
	}
	f, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return bin, f.Sync()
}

// initNS is graceful-init running as PID 1 of a new PID namespace, its main process a shell script.
type initNS struct {
	cmd    *exec.Cmd
	pid    int           // host PID of init
	done   chan struct{} // closed once init has exited
	status int           // init's exit status, once done is closed
	lines  chan string   // what init and its processes print on stdout, line by line
	stderr bytes.Buffer
}

// startInit runs graceful-init [opts...] -- sh -c script as PID 1 of a new PID namespace. The
// namespace keeps the host's /proc mount, which is what the tests read it through.
func startInit(t *testing.T, script string, opts ...string) *initNS {
	t.Helper()
	return startInitWith(t, nil, script, opts...)
}

// startInitWith is startInit with init's command set up by setup (its SysProcAttr, stdin,
// environment), if not nil.
func startInitWith(t *testing.T, setup func(*exec.Cmd), script string, opts ...string) *initNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("these tests need root: they create PID namespaces")
	}
	args := append(opts[:len(opts):len(opts)], "--", "sh", "-c", script)
	cmd := exec.Command(initBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Setpgid: true}
	if setup != nil {
		setup(cmd)
	}
	ns := &initNS{cmd: cmd, done: make(chan struct{}), lines: make(chan string, 1024)}
	if cmd.Stderr == nil {
		cmd.Stderr = &ns.stderr
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testguard.Start(cmd); err != nil {
		t.Fatal(err)
	}
	ns.pid = cmd.Process.Pid
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ns.lines <- sc.Text()
		}
		close(ns.lines)
		cmd.Wait()
		ns.status = cmd.ProcessState.ExitCode()
		close(ns.done)
	}()
	t.Cleanup(func() {
		select {
		case <-ns.done:
		default:
			// Killing PID 1 kills the rest of its namespace.
			syscall.Kill(ns.pid, syscall.SIGKILL)
			<-ns.done
		}
		if t.Failed() && ns.stderr.Len() > 0 {
			t.Logf("init's stderr:\n%s", ns.stderr.String())
		}
	})
	return ns
}

// withTerminal sets init up to lead a session whose controlling terminal is tty (its stdin), as
// runc sets up a container with a terminal.
func withTerminal(tty *os.File) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		cmd.Stdin = tty
		cmd.SysProcAttr.Setpgid = false
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	}
}

// runNamespaceShell runs argv as PID 1 of a new PID namespace (and of the namespaces of
// cloneflags), waits up to 20 s for it to finish, and returns its stderr; it fails the test if it
// fails or does not finish.
func runNamespaceShell(t *testing.T, cloneflags uintptr, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | cloneflags, Setpgid: true}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := testguard.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%v; stderr %q", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill() // PID 1: the namespace goes with it
		<-done
		t.Fatalf("the namespace's PID 1 did not finish; stderr %q", stderr.String())
	}
	return stderr.String()
}

// expect returns once the namespace has printed the line want, with the lines printed before it.
func (ns *initNS) expect(t *testing.T, want string) (before []string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-ns.lines:
			if !ok {
				t.Fatalf("output ended before %q", want)
			}
			if line == want {
				return before
			}
			t.Logf("output: %s", line)
			before = append(before, line)
		case <-deadline:
			t.Fatalf("timed out waiting for %q", want)
		}
	}
}

// expectAll returns once the namespace has printed each of want, in any order.
func (ns *initNS) expectAll(t *testing.T, want ...string) {
	t.Helper()
	left := map[string]bool{}
	for _, w := range want {
		left[w] = true
	}
	for len(left) > 0 {
		line := ns.line(t)
		if !left[line] {
			t.Logf("output: %s", line)
		}
		delete(left, line)
	}
}

// line returns the next line the namespace prints.
func (ns *initNS) line(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-ns.lines:
		if !ok {
			t.Fatal("output ended")
		}
		return line
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting for output")
	}
	return ""
}

// wait returns init's exit status once it has exited.
func (ns *initNS) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-ns.done:
		return ns.status
	case <-time.After(20 * time.Second):
		t.Fatal("init did not exit")
	}
	return 0
}

// proc is a process of the namespace, as /proc shows it.
type proc struct {
	pid, nspid int  // in the host's and in the namespace's numbering
	ppid       int  // the parent, in the host's numbering
	state      byte // 'Z' for a zombie
	comm       string
}

// procs lists the processes of init's namespace (init included), those that are in the PID
// namespace init is PID 1 of.
func (ns *initNS) procs(t *testing.T) []proc {
	t.Helper()
	nsLink, err := os.Readlink("/proc/" + strconv.Itoa(ns.pid) + "/ns/pid")
	if err != nil {
		t.Fatalf("init's namespace: %v", err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := "/proc/" + e.Name()
		if link, err := os.Readlink(dir + "/ns/pid"); err != nil || link != nsLink {
			continue
		}
		p, ok := readProc(pid)
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// readProc reads a process's state, parent and PID in its own namespace; ok is false if it is
// gone.
func readProc(pid int) (p proc, ok bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return p, false
	}
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < 0 {
		return p, false
	}
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 2 {
		return p, false
	}
	p.pid = pid
	p.comm = string(stat[open+1 : end])
	p.state = fields[0][0]
	p.ppid, _ = strconv.Atoi(fields[1])
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return p, false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, found := strings.CutPrefix(line, "NSpid:"); found {
			f := strings.Fields(rest)
			p.nspid, _ = strconv.Atoi(f[len(f)-1])
		}
	}
	return p, true
}

// waitProcs polls the namespace's processes until cond holds for them, and fails the test at a
// generous deadline (the event waited for is an exit elsewhere, which /proc only shows by polling).
func (ns *initNS) waitProcs(t *testing.T, what string, cond func([]proc) bool) []proc {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ps := ns.procs(t)
		if cond(ps) {
			return ps
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s; processes: %+v", what, ps)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// zombies are the zombies among ps.
func zombies(ps []proc) []proc {
	var z []proc
	for _, p := range ps {
		if p.state == 'Z' {
			z = append(z, p)
		}
	}
	return z
}

// byNSPid finds the process whose PID in the namespace is nspid.
func byNSPid(ps []proc, nspid int) (proc, bool) {
	for _, p := range ps {
		if p.nspid == nspid {
			return p, true
		}
	}
	return proc{}, false
}

// memory reads a process's memory figures from /proc/PID/smaps_rollup, in kB.
func memory(t *testing.T, pid int) map[string]int {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			out[strings.TrimSuffix(f[0], ":")], _ = strconv.Atoi(f[1])
		}
	}
	return out
}

// writeFIFO opens the FIFO at path for writing, which waits for its reader, and writes a line.
func writeFIFO(t *testing.T, path string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			done <- err
			return
		}
		_, err = io.WriteString(f, "go\n")
		f.Close()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no reader opened %s", path)
	}
}
