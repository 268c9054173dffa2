// Package initproc is graceful-init, a minimal init for PID 1 of a container, in the manner of
// tini: it starts the container's program as its only direct child (the main process), forwards
// to it every signal init receives, reaps every process that exits under it (its child and every
// orphan the kernel reparents to PID 1), and, once the main process has exited, keeps reaping until
// it has no child left before exiting with the main process's status.
//
// Waiting for the rest is what makes it fit the graceful shim: when PID 1 of a PID namespace exits,
// the kernel SIGKILLs everything else in the namespace, so an init that exits with its main
// process cuts the shim's drain short. graceful-init leaves the namespace alive until it is empty
// and lets the shim (from outside) decide when the remaining processes are signalled.
//
// It is written to stay small in memory (one P, a low GC target, no allocation in its loop, no
// fmt) and to be built static (CGO_ENABLED=0). It does not import containerd.
package initproc

// Version is printed by -v; the Makefile sets it with
// -ldflags "-X github.com/graceful-shim/graceful/initproc.Version=...".
var Version = "dev"
