package process

import (
	"time"

	"golang.org/x/sys/unix"
)

// Waiting for members' exits and process creations: epoll over the pidfds and the fork watcher.

// watchFd adds fd to the epoll instance.
func (d *Drainer) watchFd(fd int) {
	if d.ep >= 0 {
		unix.EpollCtl(d.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
	}
}

// wait blocks until a tracked process exits, a process is created, timeout passes or the drain is
// cancelled. It returns how many tracked processes exited and whether fork events were lost.
func (d *Drainer) wait(wake int, timeout time.Duration) (exited int, lost bool) {
	if forks, gone := d.pendingForks, d.pendingLost; len(forks) > 0 || gone {
		d.pendingForks, d.pendingLost = nil, false
		d.forked(forks)
		defer func() { lost = lost || gone }()
	}
	ready := d.readyFds(wake, max(timeout, 0))
	// The full pass's result is taken last: tracking what it found opens pidfds, which may get
	// the number of a descriptor in ready (the pass's own eventfd, once closed).
	scanReady := false
	if d.scan != nil {
		scanReady = ready[int32(d.scan.fd)]
		delete(ready, int32(d.scan.fd))
	}
	defer func() {
		if scanReady {
			d.scanned()
		}
	}()
	// Forks first: a process may start a helper and exit at once.
	if d.watch != nil && ready[int32(d.watch.fd)] {
		var forks []fork
		forks, lost = d.watch.read()
		d.forked(forks)
	}
	for fd := range ready {
		pid, ok := d.byFd[fd]
		if !ok {
			continue
		}
		t := d.active[pid]
		if !t.h.Exited() {
			// Not this pidfd's readiness: a descriptor number reused while a copy of the old
			// descriptor (held across a fork by one of the shim's children) kept it in epoll.
			continue
		}
		outcome := ExitedAfterSignal
		switch {
		case t.killed:
			outcome = Killed
		case !t.signalled:
			outcome = ExitedUnsignalled
		}
		d.end(pid, t, outcome)
		exited++
	}
	return exited, lost
}

// readyFds waits up to timeout and returns the readable fds among the tracked pidfds, the fork
// watcher and wake.
func (d *Drainer) readyFds(wake int, timeout time.Duration) map[int32]bool {
	ready := map[int32]bool{}
	if d.ep >= 0 {
		if d.events == nil {
			d.events = make([]unix.EpollEvent, 512)
		}
		n, err := epollWait(d.ep, d.events, timeout)
		for i := 0; err == nil && i < n; i++ {
			ready[d.events[i].Fd] = true
		}
		return ready
	}
	fds := make([]unix.PollFd, 0, len(d.active)+2)
	for _, t := range d.active {
		fds = append(fds, unix.PollFd{Fd: int32(t.h.fd), Events: unix.POLLIN})
	}
	for _, fd := range []int{wake, d.watchFdOrNone()} {
		if fd >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	ts := unix.NsecToTimespec(timeout.Nanoseconds())
	if n, err := unix.Ppoll(fds, &ts, nil); err == nil && n > 0 {
		for _, f := range fds {
			if f.Revents != 0 {
				ready[f.Fd] = true
			}
		}
	}
	return ready
}

func (d *Drainer) watchFdOrNone() int {
	if d.watch == nil {
		return -1
	}
	return d.watch.fd
}
