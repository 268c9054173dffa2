package process

import (
	"strconv"
	"strings"
	"time"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// Status is the part of /proc/PID/status a stop needs (see procfs.Status).
type Status = procfs.Status

// Dispositions is how a process treats signals (see procfs.Dispositions).
type Dispositions = procfs.Dispositions

// ReadStatus parses /proc/PID/status.
func ReadStatus(pid int) (Status, error) { return procfs.ReadStatus(pid) }

// Command returns the process's command line for reports, falling back to its name. Reading the
// command line takes the target's mmap lock and can block for as long as the target is stuck in a
// page fault (a hung FUSE or NFS mount): never call it on a drain's critical path (see
// commandReader).
func Command(pid int) string {
	if s, ok := readCmdline(pid); ok {
		return s
	}
	return commName(pid)
}

// readCmdline reads /proc/PID/cmdline; ok is false when it is empty or unreadable (an exited
// process, a kernel thread).
func readCmdline(pid int) (string, bool) {
	var buf [4096]byte // a report keeps 200 characters
	data, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/cmdline", buf[:])
	if err != nil || len(data) == 0 {
		return "", false
	}
	s := strings.TrimRight(strings.ReplaceAll(string(data), "\x00", " "), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s, true
}

// commName returns the process's name as "[name]", from /proc/PID/comm, which never touches the
// target's memory and so cannot block on it. It returns "" when the process cannot be read.
func commName(pid int) string {
	var buf [64]byte
	data, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/comm", buf[:])
	if err != nil {
		return ""
	}
	return "[" + strings.TrimSpace(string(data)) + "]"
}

// readProcFile reads up to len(buf) bytes of a /proc file with three system calls (open, read,
// close), where os.ReadFile takes five and an allocation: a drain reads hundreds.
func readProcFile(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// Bounds on waiting for command lines read aside (see commandReader).
const (
	// commandWait is how long a signal waits for its target's command line, and
	// commandWaitBudget how long all signals of one drain wait together.
	commandWait       = 2 * time.Millisecond
	commandWaitBudget = 20 * time.Millisecond
	// commandCollect bounds the wait for the command lines still being read when a report is
	// completed; a process whose read is stuck gets its "[comm]" instead.
	commandCollect = 150 * time.Millisecond
)

// commandReader reads the commands of a drain's detailed processes off its critical path: each is
// read in its own goroutine (a read of /proc/PID/cmdline blocks while the target is stuck in a page
// fault) and waited for only within bounds. The goroutine reads the command line, and the name
// from /proc/PID/comm (which never blocks) only when there is none; a read still stuck when the
// report is completed gets the name then. A stuck read leaks its goroutine until the target dies;
// there is one at most per detailed process (MaxDetailed).
type commandReader struct {
	pending map[int]pendingCommand // by index in Report.Processes
	got     map[int]string
	budget  time.Duration
}

type pendingCommand struct {
	pid int
	ch  chan string
}

func newCommandReader() *commandReader {
	return &commandReader{pending: map[int]pendingCommand{}, got: map[int]string{}, budget: commandWaitBudget}
}

// start begins reading pid's command for the report entry detail.
func (c *commandReader) start(pid, detail int) {
	ch := make(chan string, 1)
	c.pending[detail] = pendingCommand{pid: pid, ch: ch}
	go func() {
		// The command line, else (a zombie's, a kernel thread's) the name. A read stuck on the
		// target's memory gets the name at collect.
		name, ok := readCmdline(pid)
		if !ok {
			name = commName(pid)
		}
		ch <- name
	}()
}

// await waits briefly (commandWait, and no longer than the budget left) for the read of entry
// detail, so that a process about to die of a signal still has its command read.
func (c *commandReader) await(detail int) {
	p, ok := c.pending[detail]
	if !ok || c.budget <= 0 {
		return
	}
	start := time.Now()
	timer := time.NewTimer(min(commandWait, c.budget))
	defer timer.Stop()
	select {
	case s := <-p.ch:
		c.got[detail] = s
		delete(c.pending, detail)
	case <-timer.C:
	}
	c.budget -= time.Since(start)
}

// awaitAll waits briefly (commandWait in all, and no longer than the budget left) for the reads
// started so far, before a batch of signals.
func (c *commandReader) awaitAll() {
	if len(c.pending) == 0 || c.budget <= 0 {
		return
	}
	start := time.Now()
	timer := time.NewTimer(min(commandWait, c.budget))
	defer timer.Stop()
	for detail, p := range c.pending {
		select {
		case s := <-p.ch:
			c.got[detail] = s
			delete(c.pending, detail)
		case <-timer.C:
			c.budget -= time.Since(start)
			return
		}
	}
	c.budget -= time.Since(start)
}

// collect fills in the commands read so far, waiting at most commandCollect in all for the rest;
// an entry whose read is still stuck gets the name from /proc/PID/comm.
func (c *commandReader) collect(procs []ProcessReport) {
	timer := time.NewTimer(commandCollect)
	defer timer.Stop()
	expired := false
	for detail, p := range c.pending {
		if !expired {
			select {
			case c.got[detail] = <-p.ch:
				continue
			case <-timer.C:
				expired = true
			}
		}
		select {
		case c.got[detail] = <-p.ch:
		default:
			c.got[detail] = commName(p.pid)
		}
	}
	for detail, s := range c.got {
		if s != "" && detail < len(procs) {
			procs[detail].Command = s
		}
	}
	c.pending, c.got = map[int]pendingCommand{}, map[int]string{}
}
