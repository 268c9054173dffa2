package shim

import (
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// The shim's garbage collector is held off while its containers stop. A shim is a fresh process
// with a small heap, and a stop allocates a little (the /proc files it reads, the report), so its
// first collection tends to fall in the stop, where it costs several milliseconds of CPU that the
// container's exiting processes, the kernel and runc need on the same cores. The collector is
// off from a stop's start until its container is deleted (or stopPauseGCFor after the stop
// ends), and a memory limit stopHeadroom above what the runtime held when it was paused still
// bounds the heap meanwhile: the collector runs again if a stop ever allocates that much.
const (
	stopHeadroom   = 64 << 20
	stopPauseGCFor = 10 * time.Second
)

// gcPause counts the stops that hold the collector off; the first one turns it off and the last
// one restores the settings it found.
var gcPause struct {
	mu      sync.Mutex
	holders int
	percent int
	limit   int64
}

// pauseGC holds the collector off until the returned function is called (once or more).
func pauseGC() (resume func()) {
	gcPause.mu.Lock()
	if gcPause.holders == 0 {
		// MemStats rather than runtime/metrics, whose package initialisation alone adds 15 KB to
		// every idle shim's heap; the read's stop of the world is microseconds on a shim's heap.
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		limit := debug.SetMemoryLimit(-1) // a GOMEMLIMIT below the headroom is kept
		limit = min(limit, int64(min(m.Sys, math.MaxInt64-stopHeadroom))+stopHeadroom)
		gcPause.limit = debug.SetMemoryLimit(limit)
		gcPause.percent = debug.SetGCPercent(-1)
	}
	gcPause.holders++
	gcPause.mu.Unlock()
	var once sync.Once
	return func() { once.Do(releaseGC) }
}

// releaseGC ends one hold. The last one restores the collector's settings and runs a collection
// aside: the runc service reaps the runc commands it runs without releasing their os.Process,
// whose pidfd only the collector closes (one per forwarded Kill: twenty concurrent stop signals
// to an init-first stop left twenty until the shim exited, an idle shim collecting seldom).
func releaseGC() {
	gcPause.mu.Lock()
	defer gcPause.mu.Unlock()
	if gcPause.holders--; gcPause.holders == 0 {
		debug.SetGCPercent(gcPause.percent)
		debug.SetMemoryLimit(gcPause.limit)
		go runtime.GC()
	}
}
