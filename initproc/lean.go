package initproc

import (
	"os"
	"strings"
	"syscall"
)

// The Go runtime sizes itself before main runs: it allocates a P (scheduler context, with its
// caches) for every CPU the machine or the cgroup gives it, about 20 KiB of dirty memory each
// that runtime.GOMAXPROCS(1) does not give back, so that on a 64-CPU host an init would take
// 2 MiB. The only way to start with one P is the GOMAXPROCS environment variable, so init
// re-executes itself once, as the same PID, with GOMAXPROCS=1 (and asynchronous preemption off, so
// that the runtime never sends itself the SIGURG it would then forward), keeping whatever the
// container had set under saved names and restoring it for the child.
const (
	envReexec = "GRACEFUL_INIT_REEXEC" // set in the re-executed init
	envSaved  = "GRACEFUL_INIT_SAVED_" // prefix of a saved variable
)

// leanEnv is what the re-executed init runs with, over the container's environment.
var leanEnv = [...]string{"GOMAXPROCS=1", "GODEBUG=asyncpreemptoff=1"}

// reexecLean re-executes init with leanEnv unless it is the re-executed init already. It returns
// only if the exec fails (without /proc/self/exe, say), and init then goes on as it is.
func reexecLean(args []string) {
	if _, done := syscall.Getenv(envReexec); done {
		return
	}
	out := LeanEnv(syscall.Environ())
	argv := append([]string{os.Args[0]}, args...)
	// The binary's own path rather than /proc/self/exe, whose name would become init's comm.
	if exe, err := os.Readlink("/proc/self/exe"); err == nil {
		syscall.Exec(exe, argv, out)
	}
	syscall.Exec("/proc/self/exe", argv, out)
}

// LeanEnv is the environment init starts lean with, from env, the container's: what it sets of
// leanEnv is kept under saved names (and restored for the main process), leanEnv is added, and so is
// the mark that spares init its re-exec. The shim puts it into the spec, so that init starts lean
// at once; without it init re-executes itself with it.
func LeanEnv(env []string) []string {
	out := make([]string, 0, len(env)+len(leanEnv)+1)
	for _, kv := range env {
		if strings.HasPrefix(kv, envReexec+"=") {
			continue
		}
		if isLean(kv) {
			kv = envSaved + kv
		}
		out = append(out, kv)
	}
	out = append(out, leanEnv[:]...)
	return append(out, envReexec+"=1")
}

// isLean reports whether kv sets one of the variables of leanEnv.
func isLean(kv string) bool {
	for _, l := range leanEnv {
		name, _, _ := strings.Cut(l, "=")
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// childEnv is the environment for the main process: init's own, with what reexecLean changed put
// back as the container had it.
func childEnv(env []string) []string {
	if _, done := syscall.Getenv(envReexec); !done {
		return env
	}
	out := env[:0:0]
	for _, kv := range env {
		switch {
		case strings.HasPrefix(kv, envReexec+"="), isLean(kv):
			continue
		case strings.HasPrefix(kv, envSaved):
			kv = kv[len(envSaved):]
		}
		out = append(out, kv)
	}
	return out
}
