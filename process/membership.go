package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

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

	// notNested caches the PID namespaces (by inode) found not to be nested in the container's:
	// finding out walks the namespace's parents, four system calls a level. Only this safe answer
	// is cached: were a namespace to die and its inode number go to a new one, a stale "nested"
	// could reach a process outside the container, a stale "not nested" only misses one.
	mu        sync.Mutex
	notNested map[uint64]bool
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
	s.mu.Lock()
	known := s.notNested[ino]
	s.mu.Unlock()
	if known {
		return false
	}
	nested, ok := s.nestedIn(path)
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

// nestedIn reports whether the PID namespace at path is nested in the container's, walking up its
// parents; it stops at the caller's namespace (EPERM above it). ok is false when the walk failed
// (the process went away), so that no verdict is cached.
func (s *Scope) nestedIn(path string) (nested, ok bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, false
	}
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

// nsInode returns the inode of the namespace file at path. It reads the link ("pid:[4026531836]"),
// which costs about half a stat through procfs: this is the per-process cost of every scan.
func nsInode(path string) (uint64, error) {
	var buf [64]byte
	n, err := unix.Readlink(path, buf[:])
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	link := buf[:n]
	open, end := bytes.IndexByte(link, '['), bytes.IndexByte(link, ']')
	if open < 0 || end <= open {
		return 0, fmt.Errorf("read %s: unexpected link %q", path, link)
	}
	ino, err := strconv.ParseUint(string(link[open+1:end]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return ino, nil
}
