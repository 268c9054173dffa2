package shim

import (
	"context"
	"sync"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/shim"
)

// exitEvents is the runc service's publisher: it passes every event on to containerd, and tells
// a stop when its container's exit event (init's TaskExit) has gone out, so that the stop report
// is built and published after it rather than competing with it for the CPUs and for the
// connection to containerd.
type exitEvents struct {
	shim.Publisher

	mu      sync.Mutex
	waiters map[string]chan struct{} // by container, closed once init's TaskExit is published
}

func newExitEvents(p shim.Publisher) *exitEvents {
	return &exitEvents{Publisher: p, waiters: map[string]chan struct{}{}}
}

// Publish publishes event, then wakes whoever waits for it if it is a container's init's exit.
func (e *exitEvents) Publish(ctx context.Context, topic string, event events.Event) error {
	err := e.Publisher.Publish(ctx, topic, event)
	if exit, ok := event.(*apievents.TaskExit); ok && exit.ID == exit.ContainerID {
		e.mu.Lock()
		if ch := e.waiters[exit.ContainerID]; ch != nil {
			close(ch)
			delete(e.waiters, exit.ContainerID)
		}
		e.mu.Unlock()
	}
	return err
}

// published returns a channel closed once the exit event of container id's init has been
// published (successfully or not). Ask before init can exit: an exit published earlier is not
// remembered. A nil exitEvents returns nil, which never closes.
func (e *exitEvents) published(id string) <-chan struct{} {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	ch := e.waiters[id]
	if ch == nil {
		ch = make(chan struct{})
		e.waiters[id] = ch
	}
	return ch
}

// forget drops what waits for container id's exit event (the container is deleted).
func (e *exitEvents) forget(id string) {
	if e == nil {
		return
	}
	e.mu.Lock()
	delete(e.waiters, id)
	e.mu.Unlock()
}
