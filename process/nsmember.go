package process

import (
	"errors"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// nsGetTgidInPidns is NS_GET_TGID_IN_PIDNS, _IOR(0xb7, 0x9, int) (Linux 6.8): the PID in the
// descriptor's namespace of the argument, a caller's PID; ESRCH if that namespace does not see it.
const nsGetTgidInPidns = 0x8004b709

// pidnsTranslationUnsupported is set once the kernel has refused NS_GET_TGID_IN_PIDNS.
var pidnsTranslationUnsupported atomic.Bool

// visible reports, with one ioctl, whether the container's PID namespace sees pid (a member).
// known is false when the kernel cannot tell (before Linux 6.8, a cgroup or closed scope).
func (s *Scope) visible(pid int) (in, known bool) {
	if s.Kind != ByPIDNamespace || pidnsTranslationUnsupported.Load() {
		return false, false
	}
	s.nsMu.RLock()
	defer s.nsMu.RUnlock()
	if s.ns == nil {
		return false, false
	}
	fd := int(s.ns.Fd())
	errno := unix.ENOTTY
	if !missing(featureNSGetTgid) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetTgidInPidns, uintptr(pid))
	}
	switch errno {
	case 0:
		return true, true
	case unix.ESRCH:
		return false, true
	case unix.ENOTTY, unix.EINVAL:
		pidnsTranslationUnsupported.Store(true) // an older kernel
	}
	return false, false
}

// member reports whether pid is a member, with its PID namespace's inode (0 for a cgroup scope).
func (s *Scope) member(pid int) (nsIno uint64, ok bool) {
	if pid == s.Init {
		return 0, false
	}
	switch s.Kind {
	case ByPIDNamespace:
		return s.inNamespace(pid)
	case ByCgroup:
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
		if err != nil {
			return 0, false
		}
		entries := parseCgroups(data)
		return 0, withinAll(entries, s.cgroups) || s.threadWithin(pid, entries)
	}
	return 0, false
}

// threadWithin reports whether a thread of pid other than the main one is in the container's
// cgroups: cgroup v1 shows an exited main thread at every v1 root ("/"), while the unified
// hierarchy keeps its cgroup. Only a process matching that pattern has its threads read.
func (s *Scope) threadWithin(pid int, entries []cgroupEntry) bool {
	unified := false
	for _, c := range s.cgroups {
		p, ok := lookupCgroup(entries, c.hierarchy)
		switch {
		case !ok:
			return false
		case c.hierarchy == "0:":
			if !within(p, c.path) {
				return false
			}
			unified = true
		case p != "/" && !within(p, c.path):
			return false
		}
	}
	if !unified {
		return false
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	tids, _ := f.Readdirnames(-1)
	f.Close()
	for _, tid := range tids {
		if tid == strconv.Itoa(pid) {
			continue
		}
		data, err := os.ReadFile(dir + tid + "/cgroup")
		if err == nil && withinAll(parseCgroups(data), s.cgroups) {
			return true
		}
	}
	return false
}

func (s *Scope) inNamespace(pid int) (uint64, bool) {
	path := "/proc/" + strconv.Itoa(pid) + "/ns/pid"
	ino, err := procfs.NSInode(path)
	if err != nil {
		return ino, false
	}
	return ino, s.nsIsMember(ino, func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	})
}

// nsIsMember reports whether PID namespace ino is the container's or nested in it; open opens the
// namespace, for the walk up its parents when ino is neither the container's nor the caller's.
func (s *Scope) nsIsMember(ino uint64, open func() (int, error)) bool {
	if ino == s.selfNS {
		return false
	}
	if ino == s.nsIno {
		return true
	}
	s.mu.Lock()
	known := s.notNested[ino]
	s.mu.Unlock()
	if known {
		return false
	}
	fd, err := open()
	if err != nil {
		return false
	}
	nested, ok := s.nestedFrom(fd)
	if ok && !nested {
		s.mu.Lock()
		if s.notNested == nil {
			s.notNested = map[uint64]bool{}
		}
		s.notNested[ino] = true
		s.mu.Unlock()
	}
	return nested
}

// pidfdGetPidNamespace is PIDFD_GET_PID_NAMESPACE, _IO(0xFF, 5) (Linux 6.11): a pidfd's PID ns.
const pidfdGetPidNamespace = 0xff05

// pidfdNamespaceUnsupported is set once the kernel has refused PIDFD_GET_PID_NAMESPACE.
var pidfdNamespaceUnsupported atomic.Bool

// memberByHandle is member for h's process, reading its namespace through the pidfd where the
// kernel can (no /proc lookup, no PID to be recycled), else through /proc.
func (s *Scope) memberByHandle(h *Handle) (nsIno uint64, ok bool) {
	if s.Kind != ByPIDNamespace || pidfdNamespaceUnsupported.Load() || h.Pid == s.Init {
		return s.member(h.Pid)
	}
	fd, err := -1, error(unix.ENOTTY)
	if !missing(featurePidfdGetPidNS) {
		fd, err = unix.IoctlRetInt(h.fd, pidfdGetPidNamespace)
	}
	if err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			pidfdNamespaceUnsupported.Store(true) // an older kernel
		}
		// ESRCH: the process has exited; a zombie still shows its namespace in /proc (and keeps
		// its PID, so the check still concerns the process the pidfd refers to).
		return s.member(h.Pid)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return 0, false
	}
	member := s.nsIsMember(st.Ino, func() (int, error) {
		return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	})
	unix.Close(fd)
	return st.Ino, member
}

// nestedFrom reports whether the namespace open on fd (which it closes) is nested in the
// container's, walking up to the caller's (EPERM above); ok is false when the walk failed, so
// that no verdict is cached.
func (s *Scope) nestedFrom(fd int) (nested, ok bool) {
	for {
		parent, err := unix.IoctlRetInt(fd, nsGetParent)
		unix.Close(fd)
		if err != nil {
			return false, errors.Is(err, unix.EPERM)
		}
		fd = parent
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil {
			unix.Close(fd)
			return false, false
		}
		if st.Ino == s.nsIno || st.Ino == s.selfNS {
			unix.Close(fd)
			return st.Ino == s.nsIno, true
		}
	}
}
