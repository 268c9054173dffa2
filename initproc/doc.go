// Package initproc holds graceful-init, a minimal init for PID 1 of a container in the manner of
// tini, and its tests. graceful-init itself is C (graceful-init.c, built by build.sh), as tini,
// dumb-init and catatonit are: one thread and a few pages of memory, where a Go runtime took half a
// megabyte and a millisecond more to start, in every container.
//
// It starts the container's program as its child (the main process), forwards every signal it
// receives to it, and reaps every process that exits under it. When the main process exits it
// drains the container, by itself (standalone) or by leaving it to the graceful shim:
//   - Standalone, the default (an image's ENTRYPOINT, docker run --init, any runtime): the drain
//     signal to every other process of the container, up to the grace period, SIGKILL to what is
//     left, and then it exits with the main process's status.
//   - Under the graceful shim (ShimFlag, which only the shim passes): it only waits until it is
//     alone, keeping the namespace alive, and the shim drains it from outside and reports.
//
// The package's Go side is only what the shim shares with it; it does not import containerd.
package initproc

// ShimFlag tells graceful-init that the graceful shim runs it and drains the container when the
// main process exits (see shim/initspec.go).
const ShimFlag = "--shim"
