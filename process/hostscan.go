package process

import (
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// hostScan is the drain's full pass over /proc, run once in a goroutine of its own, for members
// the sweeps miss (a process that entered the PID namespace by setns from outside the cgroup).
type hostScan struct {
	fd     int           // eventfd, readable once found is ready
	found  chan []int    // the members the pass found beyond skip
	cancel chan struct{} // closed to end the pass early
	done   chan struct{} // closed when the goroutine has ended
}

// startScan starts the full pass, skipping the processes known so far; without an eventfd or epoll
// it runs inline. A scope without a cgroup needs none: its sweeps read the whole process table.
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
		// At nice 19 on its own thread: the pass takes what the stop leaves of the CPUs.
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

// scanMembers returns the members of scope not in skip, or nil when cancel was closed first. It
// checks cancel every 64 entries, so a cancelled pass soon stops competing with the exits.
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

// scanFound tracks the members only the full pass found. One started before the drain was missed
// by the sweeps and gets the drain signal (SIGKILL after the grace); one started since (by setns
// during the stop) is left alone until the grace is over.
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
	// Not waited for: the pass stops within 64 entries; its eventfd is closed once it has.
	go func() {
		<-scan.done
		unix.Close(scan.fd)
	}()
}
