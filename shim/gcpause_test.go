package shim

import (
	"runtime/debug"
	"testing"
)

// gcSettings reads the collector's percent and memory limit without changing them.
func gcSettings() (percent int, limit int64) {
	percent = debug.SetGCPercent(-1)
	debug.SetGCPercent(percent)
	return percent, debug.SetMemoryLimit(-1)
}

// Stops that overlap (a pod's containers in one shim) hold the collector off together: it stays
// off until the last one resumes, under a memory limit, and then has the settings it had before,
// whichever order they end in and however often each resumes.
func TestStopsPauseTheCollectorTogether(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(1 << 40))
	first := pauseGC()
	second := pauseGC()
	if percent, limit := gcSettings(); percent != -1 || limit >= 1<<40 {
		t.Fatalf("during two stops: GC percent %d, memory limit %d: want -1 and a limit below the one set", percent, limit)
	}
	first()
	first()
	if percent, _ := gcSettings(); percent != -1 {
		t.Fatalf("with one stop left: GC percent %d, want -1", percent)
	}
	second()
	if percent, limit := gcSettings(); percent != 150 || limit != 1<<40 {
		t.Fatalf("after both stops: GC percent %d, memory limit %d: want 150 and %d", percent, limit, int64(1<<40))
	}
}

// A GOMEMLIMIT lower than the pause's headroom is kept during the pause.
func TestPauseKeepsALowerMemoryLimit(t *testing.T) {
	const low = 8 << 20
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(low))
	resume := pauseGC()
	_, limit := gcSettings()
	resume()
	if limit != low {
		t.Fatalf("memory limit during the pause %d, want the %d set before", limit, low)
	}
}
