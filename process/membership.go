package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// nsGetParent is NS_GET_PARENT, _IO(0xb7, 0x2): the parent of a PID namespace.
const nsGetParent = 0xb702

// ScopeKind says how a container's processes are told apart from the rest of the host.
type ScopeKind string

const (
	// ByPIDNamespace: the container's init is PID 1 of its own PID namespace; its members are every
	// process in that namespace or in a namespace nested inside it (exactly what the kernel's zap
	// would kill).
	ByPIDNamespace ScopeKind = "pid-namespace"
	// ByCgroup: the container shares a PID namespace (pod-shared PID, host PID); its members are
	// the processes in the same cgroups as its init.
	ByCgroup ScopeKind = "cgroup"
)

// Scope identifies the processes of one container.
type Scope struct {
	// Init is the container's init process (host PID); it is never listed as a member.
	Init int
	// Kind says how members are recognised.
	Kind ScopeKind

	nsIno  uint64 // ByPIDNamespace: inode of the container's PID namespace
	selfNS uint64 // inode of the caller's own PID namespace, never a container's
	cgroup []byte // ByCgroup: /proc/Init/cgroup as read when the scope was made
}

// ScopeOf returns the scope of the container whose init is the live process init.
func ScopeOf(init int) (*Scope, error) {
	st, err := ReadStatus(init)
	if err != nil {
		return nil, err
	}
	self, err := nsInode("/proc/self/ns/pid")
	if err != nil {
		return nil, err
	}
	s := &Scope{Init: init, selfNS: self}
	if st.NamespaceInit() {
		s.Kind = ByPIDNamespace
		if s.nsIno, err = nsInode(fmt.Sprintf("/proc/%d/ns/pid", init)); err != nil {
			return nil, err
		}
		if s.nsIno == self {
			return nil, fmt.Errorf("process %d is PID 1 of the caller's own PID namespace", init)
		}
		return s, nil
	}
	s.Kind = ByCgroup
	if s.cgroup, err = os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", init)); err != nil {
		return nil, fmt.Errorf("read cgroup of %d: %w", init, err)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read own cgroup: %w", err)
	}
	if bytes.Equal(own, s.cgroup) {
		return nil, fmt.Errorf("process %d shares the caller's cgroups and PID namespace: its container cannot be told apart from the host", init)
	}
	return s, nil
}

// Contains reports whether pid is currently a member of the container (init excluded). A process
// that cannot be read (gone, or a kernel thread) is not a member.
func (s *Scope) Contains(pid int) bool {
	if pid == s.Init {
		return false
	}
	switch s.Kind {
	case ByPIDNamespace:
		return s.inNamespace(pid)
	case ByCgroup:
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
		return err == nil && bytes.Equal(data, s.cgroup)
	}
	return false
}

func (s *Scope) inNamespace(pid int) bool {
	path := "/proc/" + strconv.Itoa(pid) + "/ns/pid"
	ino, err := nsInode(path)
	if err != nil || ino == s.selfNS {
		return false
	}
	if ino == s.nsIno {
		return true
	}
	// Another namespace: it belongs to the container when the container's namespace is one of its
	// ancestors. Walking up stops at the caller's namespace (EPERM above it).
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	for {
		parent, err := unix.IoctlRetInt(fd, nsGetParent)
		unix.Close(fd)
		if err != nil {
			return false
		}
		fd = parent
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil {
			unix.Close(fd)
			return false
		}
		if st.Ino == s.nsIno {
			unix.Close(fd)
			return true
		}
		if st.Ino == s.selfNS {
			unix.Close(fd)
			return false
		}
	}
}

// Members lists the PIDs that are members of the container now, init excluded. The list is a
// snapshot: use Open and Contains again (in that order) before signalling any of them.
func (s *Scope) Members() ([]int, error) {
	pids, err := allPIDs()
	if err != nil {
		return nil, err
	}
	members := pids[:0]
	for _, pid := range pids {
		if s.Contains(pid) {
			members = append(members, pid)
		}
	}
	return members, nil
}

// OpenMember returns a pidfd for pid if, and only if, it is a member of the container. The pidfd
// is opened before membership is checked, so a PID recycled after the check is never reached
// through it: any later signal through the handle either hits the checked process or fails.
func (s *Scope) OpenMember(pid int) (*Handle, error) {
	h, err := Open(pid)
	if err != nil {
		return nil, err
	}
	if !s.Contains(pid) {
		h.Close()
		return nil, ErrNotMember
	}
	return h, nil
}

// ErrNotMember reports a process that is not part of the container.
var ErrNotMember = errors.New("process is not a member of the container")

func allPIDs() ([]int, error) {
	f, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("open /proc: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	pids := make([]int, 0, len(names))
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		if pid, err := strconv.Atoi(name); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}
