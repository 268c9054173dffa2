// Package process holds the Linux process mechanics of a graceful stop: which processes belong to a
// container (its PID namespace, or its cgroup when it shares one), signalling them through pidfds so
// that a recycled PID is never hit, waiting for their exits on pidfd readiness, reading signal
// dispositions, and the drain that ties these together. The programs that run in processes of
// their own (the tracer, the signaller) are in package helper.
//
// It does not import containerd: everything here works on plain PIDs and is tested in real
// unshare'd PID namespaces.
package process
