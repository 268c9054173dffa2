// Package initproc is graceful-init, a minimal init for PID 1 of a container in the manner of
// tini: it starts the container's program as its child (the main process), forwards to it every
// signal init receives, reaps every process that exits under it (its child and every orphan the
// kernel reparents to PID 1), and, once the main process has exited, keeps reaping until it has
// no child left before it exits with the main process's status (128+n if signal n killed it).
//
// Waiting for the rest is what makes it fit the graceful shim: when PID 1 of a PID namespace exits,
// the kernel SIGKILLs everything else in the namespace, so an init that exits with its main
// process cuts the shim's drain short. graceful-init keeps the namespace alive until it is empty
// (every process in it descends from PID 1, except those a runtime's exec puts there) and leaves
// it to the shim, from outside, to signal what remains; signals init receives once the main
// process is gone go nowhere.
//
// Choices, compared with tini:
//   - The main process always runs in a process group of its own, as in tini (whose -g only sends
//     signals to that whole group); when stdin is init's controlling terminal, the group is also
//     made the terminal's foreground group, so that ^C and ^Z go to the program.
//   - Every signal is forwarded but SIGCHLD, SIGKILL and SIGSTOP (which cannot be caught), SIGTTIN
//     and SIGTTOU (which, as tini does, init drops rather than be stopped by), and signals 32, 33
//     and SIGPROF, which the Go runtime keeps to itself. SIGTSTP is forwarded.
//   - The program is run directly (resolved through PATH as execvp does, never through a shell):
//     127 if it does not exist, 126 if it cannot be executed, with the reason on stderr.
//
// It is kept small in memory: Go's os/signal (the runtime leaves no way to sigwait), one P, a low GC
// target, no allocation in its loop, no fmt, a static binary (CGO_ENABLED=0); and, since the runtime
// sizes itself for the CPUs before main runs, it re-executes itself once with GOMAXPROCS=1 (see
// reexecLean). It does not import containerd.
package initproc

// Version is printed by -v; the Makefile sets it with
// -ldflags "-X github.com/graceful-shim/graceful/initproc.Version=...".
var Version = "dev"
