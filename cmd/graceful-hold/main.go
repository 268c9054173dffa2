// Command graceful-hold is the shim's tracer: it holds a container's init at exit, inside the
// kernel's exit path, while the shim drains the rest of the container (see helper.RunTracer).
// With -signal-all it is the drain's signaller instead, started inside the container's PID
// namespace (see helper.SignallerMain).
// It imports nothing but the helper package, so it starts in about a millisecond where
// re-executing the shim binary runs every containerd package's initialisation again.
//
// Usage (by the shim only):
//
//	graceful-hold PID             (a pidfd of PID on descriptor 3; "release" or EOF on stdin lets it go)
//	graceful-hold -signal-all NS  (inside PID namespace NS; a signal number per line on stdin)
package main

import (
	"os"

	"github.com/graceful-shim/graceful/helper"
)

func main() {
	os.Exit(helper.Main(os.Args[1:]))
}
