package process

import (
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// The full pass over /proc, run aside once, for a member that only it finds (one that entered the
// container's PID namespace by setns from outside its cgroup).

// hostScan is the drain's full pass over /proc, run in a goroutine of its own: it lists the
// members that the sweeps from the container itself did not track.
type hostScan struct {
	fd     int           // eventfd, readable once found is ready
	found  chan []int    // the members the pass found beyond skip
	cancel chan struct{} // closed to end the pass early
	done   chan struct{} // closed when the goroutine has ended
}

// startScan starts the full pass, skipping the processes tracked so far. Without an eventfd (or
// without epoll to wait on it) the pass runs inline instead. A scope without a cgroup to list has
// had its sweeps read the whole process table already: it needs no pass.
func (d *Drainer) startScan() {
	if d.scope.cgroupDir == "" {
		d.report.HostScanDone = true
		return
	}
	skip := make(map[int]bool, len(d.active)+len(d.finished)+1)
	for pid := range d.active {
		skip[pid] = true
	}
	for pid := range d.finished {
		skip[pid] = true
	}
	if d.listed != nil {
		for pid := range d.listed.members {
			skip[pid] = true
		}
	}
	skip[d.scope.Init] = true
	if d.signallerPid > 0 {
		skip[d.signallerPid] = true
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil || d.ep < 0 {
		if err == nil {
			unix.Close(fd)
		}
		d.scanFound(scanMembers(d.scope, skip, nil))
		return
	}
	scan := &hostScan{fd: fd, found: make(chan []int, 1), cancel: make(chan struct{}), done: make(chan struct{})}
	d.scan = scan
	d.watchFd(fd)
	go func() {
		defer close(scan.done)
		// At the lowest priority, on its own thread while it runs: the pass takes what the stop
		// leaves of the CPUs, not a share of them.
		runtime.LockOSThread()
		tid := unix.Gettid()
		if unix.Setpriority(unix.PRIO_PROCESS, tid, 19) == nil {
			defer func() {
				if unix.Setpriority(unix.PRIO_PROCESS, tid, 0) == nil {
					runtime.UnlockOSThread()
				} // else the thread ends with the goroutine, still locked
			}()
		} else {
			runtime.UnlockOSThread()
		}
		found := scanMembers(d.scope, skip, scan.cancel)
		if found != nil {
			scan.found <- found
			unix.Write(scan.fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	}()
}

// scanMembers returns the members of scope in the process table that are not in skip, or nil when
// cancel was closed first. It reads /proc a chunk at a time and checks cancel between chunks and
// every 64 processes, so that a cancelled pass stops within a fraction of a millisecond instead of
// competing for the CPUs with the container's exit (on a host of 20 000 processes, listing /proc
// alone takes several milliseconds).
func scanMembers(scope *Scope, skip map[int]bool, cancel <-chan struct{}) []int {
	f, err := os.Open("/proc")
	if err != nil {
		return []int{}
	}
	defer f.Close()
	found := []int{}
	cancelled := func() bool {
		select {
		case <-cancel:
			return true
		default:
			return false
		}
	}
	for {
		if cancel != nil && cancelled() {
			return nil
		}
		names, err := f.Readdirnames(scanChunk)
		for i, name := range names {
			if i%64 == 63 && cancel != nil && cancelled() {
				return nil
			}
			if name[0] < '0' || name[0] > '9' {
				continue
			}
			if pid, err := strconv.Atoi(name); err == nil && !skip[pid] && scope.Contains(pid) {
				found = append(found, pid)
			}
		}
		if err != nil || len(names) == 0 {
			return found
		}
	}
}

// scanChunk is how many /proc entries the full pass reads at a time.
const scanChunk = 256

// scanned takes the full pass's result, when it is ready.
func (d *Drainer) scanned() {
	if d.scan == nil {
		return
	}
	select {
	case found := <-d.scan.found:
		d.endScan()
		d.scanFound(found)
	default:
	}
}

// scanFound tracks the members that only the full pass found. One that started before the drain
// is a member that the sweeps missed: it gets the drain signal (SIGKILL once the grace is over).
// One that started since, outside everything the sweeps list (a process started by setns during
// the stop, say: a member's own new processes are in its cgroup, and the fork watcher reports
// them), is left alone until the grace is over, and SIGKILLed after.
func (d *Drainer) scanFound(pids []int) {
	d.report.HostScanDone = true
	for _, pid := range pids {
		if _, ok := d.active[pid]; ok {
			continue
		}
		if _, ok := d.finished[pid]; ok {
			continue
		}
		start, ok := startTime(pid)
		if !ok {
			continue
		}
		sig := d.cfg.Signal
		switch {
		case d.phaseSig != 0:
			sig = d.phaseSig
		case start >= d.startTicks:
			// Possibly started since the drain began (ticks are 10 ms): not a missed member.
			continue
		}
		if d.atOnceAt() != 0 && sig == d.cfg.Signal {
			// Started before the drain: the signaller's kill(-1) reached it.
			if t := d.open(pid, sig); t != nil {
				d.markSignalledAtOnce(t)
				d.report.HostScanFound++
			}
			continue
		}
		if d.track(pid, sig) {
			d.report.HostScanFound++
		}
	}
}

// endScan stops the full pass (if it still runs) and lets it go.
func (d *Drainer) endScan() {
	if d.scan == nil {
		return
	}
	scan := d.scan
	d.scan = nil
	if d.ep >= 0 {
		unix.EpollCtl(d.ep, unix.EPOLL_CTL_DEL, scan.fd, nil)
	}
	close(scan.cancel)
	// The pass notices the cancel within 64 processes (or once it has listed /proc): the drain
	// does not wait for it, and its eventfd is closed when it has gone.
	go func() {
		<-scan.done
		unix.Close(scan.fd)
	}()
}
