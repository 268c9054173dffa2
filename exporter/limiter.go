package exporter

import (
	"sync"
	"time"
)

// podLimiter allows one Event per pod per interval. It forgets pods whose last Event is older
// than the interval, so that it does not grow as pods come and go.
type podLimiter struct {
	mu       sync.Mutex
	interval time.Duration
	last     map[string]time.Time
	pruned   time.Time
}

func newPodLimiter(interval time.Duration) *podLimiter {
	return &podLimiter{interval: interval, last: map[string]time.Time{}}
}

// allow reports whether pod may have an Event at now; mark records one.
func (l *podLimiter) allow(pod string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.pruned) >= l.interval {
		for p, t := range l.last {
			if now.Sub(t) >= l.interval {
				delete(l.last, p)
			}
		}
		l.pruned = now
	}
	t, ok := l.last[pod]
	return !ok || now.Sub(t) >= l.interval
}

// mark records an Event for pod at now.
func (l *podLimiter) mark(pod string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last[pod] = now
}

// forget drops pod's Event at at, if it is still the last one recorded.
func (l *podLimiter) forget(pod string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[pod]; ok && t.Equal(at) {
		delete(l.last, pod)
	}
}

// len returns how many pods the limiter remembers.
func (l *podLimiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.last)
}
