package process

import (
	"strconv"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// Nested PID namespaces: an init inside the container that would drop the drain signal is
// SIGKILLed once the rest of its namespace has exited.

// defers returns pid's PID namespace (ns, when membership has read it already) and whether pid
// must not get sig now: it is PID 1 of a namespace nested in the container's (bubblewrap,
// unshare -p, docker-in-docker), where the kernel drops a signal without a handler, and has none
// for sig. Such an init is SIGKILLed instead, once the rest of its namespace is gone (a SIGKILL
// now would zap its children before their cleanup).
func (d *Drainer) defers(pid int, ns uint64, sig unix.Signal) (uint64, bool) {
	var err error
	if ns == 0 {
		ns, err = procfs.NSInode("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	}
	if err != nil || ns == d.scope.nsIno || ns == d.scope.selfNS || sig == 0 || sig == unix.SIGKILL {
		// In the container's own namespace (or the caller's, for a cgroup scope) only the
		// container's init is a PID 1, and it is never a member.
		return ns, false
	}
	st, err := ReadStatus(pid)
	if err != nil || !st.NamespaceInit() {
		return ns, false
	}
	handles, err := WillHandle(pid, sig)
	return ns, err == nil && !handles
}

// releaseDeferred SIGKILLs each deferred nested init whose namespace holds no other active
// process, apart from those the deferred inits started during the drain.
func (d *Drainer) releaseDeferred() {
	if d.deferred == 0 {
		return
	}
	busy := map[uint64]bool{}
	for _, t := range d.active {
		if !t.deferred && !t.deferredOwn {
			busy[t.nsIno] = true
		}
	}
	for _, t := range d.active {
		if t.deferred && !busy[t.nsIno] {
			t.deferred = false
			d.deferred--
			d.signal(t, unix.SIGKILL)
			t.killed = true
		}
	}
}

// markDeferredOwn marks the tracked process pid as started by a deferred init (or by one of its
// own new processes) when its parent ppid is one.
func (d *Drainer) markDeferredOwn(pid, ppid int) {
	t, p := d.active[pid], d.active[ppid]
	if t != nil && p != nil && (p.deferred || p.deferredOwn) {
		t.deferredOwn = true
	}
}
