package shim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// mainWatch follows the main process under graceful-init through a pidfd. It exists from Start on,
// before the main process is found, so that a stop always knows init is graceful-init (which exits
// only once alone, so is never held at its exit).
type mainWatch struct {
	exited     chan struct{} // closed when the main process has exited, or cannot be watched
	markExited sync.Once
	// found is closed once the search for the main process is over (found or not).
	found chan struct{}

	mu        sync.Mutex
	wake      int  // eventfd that ends the watch early (the container is deleted)
	cancelled bool // cancel was called
	closed    bool
}

func newMainWatch() (*mainWatch, error) {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &mainWatch{exited: make(chan struct{}), found: make(chan struct{}), wake: wake}, nil
}

// awaitFound waits until the search for the main process is over (at most mainStartTimeout). A
// stop waits for it before signalling graceful-init: a main process that exited unfound could not
// be told from adopted ones, and the drain, which waits for its exit, would never start.
func (w *mainWatch) awaitFound() {
	select {
	case <-w.found:
	case <-time.After(mainStartTimeout):
	}
}

// exit marks the main process gone (exited or unwatchable): a stop then drains the rest at once.
func (w *mainWatch) exit() { w.markExited.Do(func() { close(w.exited) }) }

func (w *mainWatch) isCancelled() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cancelled
}

// cancel ends the watch without a drain.
func (w *mainWatch) cancel() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cancelled = true
	if !w.closed {
		one := [8]byte{1}
		unix.Write(w.wake, one[:])
	}
}

func (w *mainWatch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	unix.Close(w.wake)
}

// Start starts the container and, under graceful-init, begins to watch its main process.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	s.mu.Lock()
	c := s.containers[r.ID]
	s.mu.Unlock()
	// The main process is graceful-init's first child: follow creations from before the start to
	// know it exactly, even if it forks and exits before Start returns.
	var forks *process.ForkWatch
	if r.ExecID == "" && c != nil && c.policy.Init {
		var err error
		if forks, err = process.NewForkWatch(); err != nil {
			log.G(s.ctx).WithError(err).WithField("id", r.ID).Warn("graceful: cannot follow process creations: the main process under graceful-init is looked for instead")
		}
	}
	resp, err := s.TTRPCTaskService.Start(ctx, r)
	if err != nil || r.ExecID != "" || c == nil || !c.policy.Init {
		if forks != nil {
			forks.Close()
		}
		return resp, err
	}
	w, err := newMainWatch()
	if err != nil {
		if forks != nil {
			forks.Close()
		}
		log.G(s.ctx).WithError(err).WithField("id", r.ID).Warn("graceful: cannot watch the main process under graceful-init")
		return resp, nil
	}
	s.mu.Lock()
	c.main = w
	s.mu.Unlock()
	// Found in the background; a stop that comes first waits for the search (awaitFound).
	go func() {
		h, err := watchMain(int(resp.Pid), w, forks)
		if forks != nil {
			forks.Close()
		}
		close(w.found)
		if errors.Is(err, errMainGone) {
			// It has exited already (and been reaped): the rest is drained now.
			s.followMain(r.ID, c, w, nil, int(resp.Pid))
			return
		}
		if err != nil {
			if !errors.Is(err, errWatchCancelled) {
				// A stop then drains at once: graceful-init exits once the rest is gone.
				log.G(s.ctx).WithError(err).WithField("id", r.ID).Warn("graceful: cannot watch the main process under graceful-init")
				w.exit()
			}
			w.close()
			return
		}
		s.followMain(r.ID, c, w, h, int(resp.Pid))
	}()
	return resp, nil
}

// mainStartTimeout bounds how long graceful-init may take to start the main process.
const mainStartTimeout = 10 * time.Second

// errWatchCancelled: the container was deleted before its main process was found.
var errWatchCancelled = errors.New("the watch was cancelled")

// errMainGone: the main process has exited and been reaped already.
var errMainGone = errors.New("the main process has exited")

// watchMain finds the main process, graceful-init's (initPid) first child, and opens a pidfd on it
// before checking its parent, so a recycled PID is never watched. With forks the child is known
// exactly (errMainGone: it has exited already); without, it is the oldest child.
func watchMain(initPid int, w *mainWatch, forks *process.ForkWatch) (*process.Handle, error) {
	deadline := time.Now().Add(mainStartTimeout)
	if forks != nil {
		pid, err := forks.FirstChild(initPid, deadline, w.wake)
		switch {
		case errors.Is(err, process.ErrWatchCancelled):
			return nil, errWatchCancelled
		case err == nil:
			h, err := process.Open(pid)
			if errors.Is(err, process.ErrGone) {
				return nil, errMainGone
			}
			if err != nil {
				return nil, fmt.Errorf("open the main process %d: %w", pid, err)
			}
			if st, err := process.ReadStatus(pid); err != nil || st.PPid != initPid {
				h.Close() // exited and reaped, its PID perhaps another's
				return nil, errMainGone
			}
			return h, nil
		case !errors.Is(err, process.ErrForksLost):
			return nil, fmt.Errorf("find graceful-init's main process: %w", err)
		}
		// Events were lost: look for the oldest child instead.
	}
	for {
		if w.isCancelled() {
			return nil, errWatchCancelled
		}
		pid, err := process.OldestChild(initPid)
		if err != nil {
			return nil, fmt.Errorf("find graceful-init's main process: %w", err)
		}
		if pid > 0 {
			h, err := process.Open(pid)
			if err != nil {
				return nil, fmt.Errorf("open the main process %d: %w", pid, err)
			}
			if st, err := process.ReadStatus(pid); err != nil || st.PPid != initPid {
				h.Close()
				return nil, fmt.Errorf("the main process %d is gone", pid)
			}
			return h, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("graceful-init %d started no main process within %s", initPid, mainStartTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// claimMainExit claims the stop that drains the rest after the main process exited by itself (nil:
// none to run). A stop Kill claimed meanwhile drains the rest itself once begun; if it is given up
// (forwarded) instead, the main-exit stop is claimed once it has settled.
func (s *service) claimMainExit(id string, c *container, w *mainWatch) *stop {
	for {
		s.mu.Lock()
		w.exit()
		if s.containers[id] != c {
			s.mu.Unlock()
			return nil
		}
		claimed := c.stop
		if claimed == nil {
			st := newStop(id, c.workload, 0, c.policy)
			st.inProgress = MainExited
			st.exitPublished = s.exits.published(id)
			c.stop = st
			s.reports.Add(1)
			s.mu.Unlock()
			return st
		}
		s.mu.Unlock()
		<-claimed.settled
		if claimed.began {
			return nil
		}
	}
}

// followMain waits for the main process to exit; unless a stop in progress drains the rest, a
// main-exit stop does, with the same policy and report as any stop.
func (s *service) followMain(id string, c *container, w *mainWatch, h *process.Handle, initPid int) {
	defer w.close()
	exited := true // h nil: the main process has exited already
	if h != nil {
		var err error
		exited, err = h.WaitExited(w.wake)
		h.Close()
		if err != nil {
			log.L.WithError(err).WithField("id", id).Warn("graceful: watch the main process")
		}
	}
	if !exited {
		return
	}
	st := s.claimMainExit(id, c, w)
	if st == nil {
		return
	}
	defer s.reports.Done()
	if !st.beginMainExit(initPid) {
		s.unclaim(c, st)
		return
	}
	s.publish(st.finish())
	s.unclaim(c, st)
}
