package shim

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// scriptedStrategy ends its stop with report, then runs after (an abort, say).
type scriptedStrategy struct {
	report *process.Report
	after  func(s *stop)
}

func (f scriptedStrategy) finish(s *stop) *process.Report {
	if f.after != nil {
		f.after(s)
	}
	return f.report
}

func (scriptedStrategy) close() {}

// A stop's report says it was aborted by SIGKILL only when the abort cut its drain (or came
// before there was one), not when the task's Delete lands just after init was released.
func TestStopReportsAnAbortOnlyWhenItCutTheDrain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		report  *process.Report
		abort   bool
		aborted bool
	}{
		{"drain over, then Delete", &process.Report{}, true, false},
		{"drain cut by SIGKILL", &process.Report{Cancelled: true}, true, true},
		{"SIGKILL before any drain", nil, true, true},
		{"no abort", &process.Report{}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStop("c", unix.SIGTERM, DefaultPolicy())
			published := make(chan struct{})
			close(published)
			s.exitPublished = published
			s.strategy = scriptedStrategy{report: tc.report, after: func(s *stop) {
				if tc.abort {
					s.abort()
				}
			}}
			r := s.finish()
			if got := slices.Contains(r.Notes, "stop aborted by SIGKILL"); got != tc.aborted {
				t.Fatalf("notes %q: aborted %v, want %v", r.Notes, got, tc.aborted)
			}
		})
	}
}
