package shim

import (
	"os"
	"path/filepath"
	"runtime/pprof"

	"github.com/containerd/log"
)

// ProfileDirEnv, set in containerd's environment (and so the shim's), makes every stop write a Go
// CPU profile of the shim to DIR/<container id>.pprof, for `go tool pprof`.
const ProfileDirEnv = "GRACEFUL_CPUPROFILE_DIR"

// startProfile starts a CPU profile for the stop of container id when ProfileDirEnv is set; the
// returned function stops it.
func startProfile(id string) func() {
	dir := os.Getenv(ProfileDirEnv)
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, id+".pprof"))
	if err != nil {
		log.L.WithError(err).Warn("graceful: cpu profile")
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
