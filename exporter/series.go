package exporter

import (
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// podLabel is the index of the pod label in every vector that podSeries tracks.
const podLabel = 2

// maxLabelLength bounds a label value taken from a report.
const maxLabelLength = 256

// podSeries bounds the cardinality of the vectors labelled with a pod: it remembers when each of
// their label sets naming a pod was last updated, and sweep deletes those that have not been
// for a while, as pods come and go. Label sets with an empty pod are few and kept.
type podSeries struct {
	mu   sync.Mutex
	now  func() time.Time
	seen map[seriesKey]*seriesEntry
}

type seriesKey struct {
	vec    *prometheus.MetricVec
	labels string // the label values, joined by a byte that valid UTF-8 never holds
}

type seriesEntry struct {
	values []string
	last   time.Time
}

func newPodSeries(now func() time.Time) *podSeries {
	return &podSeries{now: now, seen: map[seriesKey]*seriesEntry{}}
}

// add adds n to the counter of vec with the label values, and records the update. The label
// values must be as many as vec's labels, and clean (see labelValue).
func (s *podSeries) add(vec *prometheus.CounterVec, n float64, values ...string) {
	if n < 0 {
		return // a counter cannot go down; validate rejects such reports
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vec.WithLabelValues(values...).Add(n)
	if values[podLabel] == "" {
		return
	}
	key := seriesKey{vec: vec.MetricVec, labels: strings.Join(values, "\xff")}
	if e, ok := s.seen[key]; ok {
		e.last = s.now()
		return
	}
	s.seen[key] = &seriesEntry{values: append([]string(nil), values...), last: s.now()}
}

// sweep deletes the label sets naming a pod that were last updated longer than forgetAfter ago,
// and returns how many it deleted.
func (s *podSeries) sweep(forgetAfter time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	cutoff := s.now().Add(-forgetAfter)
	deleted := 0
	for key, e := range s.seen {
		if e.last.Before(cutoff) {
			key.vec.DeleteLabelValues(e.values...)
			delete(s.seen, key)
			deleted++
		}
	}
	return deleted
}

// len returns how many label sets naming a pod are remembered.
func (s *podSeries) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// sweepInterval is how often the series are swept: once a minute, or a quarter of forgetAfter if
// that is shorter.
func sweepInterval(forgetAfter time.Duration) time.Duration {
	return max(min(time.Minute, forgetAfter/4), time.Millisecond)
}

// labelValue makes a value from a report fit for a label: valid UTF-8 (the client library
// panics on anything else) of bounded length.
func labelValue(s string) string {
	return cutRunes(strings.ToValidUTF8(s, "\uFFFD"), maxLabelLength)
}

// cutRunes cuts s to at most n bytes, on a rune boundary.
func cutRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
