package process

import (
	"strconv"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// defers returns pid's PID namespace (ns if already read) and whether pid must not get sig now: it
// is PID 1 of a nested namespace with no handler for sig, which the kernel would drop. Such an init
// is SIGKILLed once the rest of its namespace is gone (sooner would cut its children's cleanup).
func (d *Drainer) defers(pid int, ns uint64, sig unix.Signal) (uint64, bool) {
	var err error
	if ns == 0 {
		ns, err = procfs.NSInode("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	}
	if err != nil || ns == d.scope.nsIno || ns == d.scope.selfNS || sig == 0 || sig == unix.SIGKILL {
		// In the container's (or caller's) namespace the only PID 1 is init, never a member.
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

// markDeferredOwn marks pid deferredOwn when its parent ppid is a deferred init or deferredOwn.
func (d *Drainer) markDeferredOwn(pid, ppid int) {
	t, p := d.active[pid], d.active[ppid]
	if t != nil && p != nil && (p.deferred || p.deferredOwn) {
		t.deferredOwn = true
	}
}
