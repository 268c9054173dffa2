package process

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"

	"github.com/graceful-shim/graceful/internal/procfs"

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
	// the processes in its init's cgroups or below them, on every hierarchy where that cgroup
	// tells the container apart from the host (see ScopeOf).
	ByCgroup ScopeKind = "cgroup"
)

// Scope identifies the processes of one container.
type Scope struct {
	// Init is the container's init process (host PID); it is never listed as a member.
	Init int
	// Kind says how members are recognised.
	Kind ScopeKind

	nsIno   uint64        // ByPIDNamespace: inode of the container's PID namespace
	selfNS  uint64        // inode of the caller's own PID namespace, never a container's
	cgroups []cgroupEntry // ByCgroup: init's cgroups on the hierarchies that tell the container apart
	// cgroupDir is the container's cgroup directory that candidates are listed from, "" when no
	// cgroup tells the container apart (the full pass over /proc then finds every member).
	cgroupDir string
	// pidsCounter is the container cgroup's pids.current ("" without a pids controller): its
	// size at the cost of one small read.
	pidsCounter string

	// notNested caches the PID namespaces (by inode) found not to be nested in the container's:
	// finding out walks the namespace's parents, four system calls a level. Only this safe answer
	// is cached: were a namespace to die and its inode number go to a new one, a stale "nested"
	// could reach a process outside the container, a stale "not nested" only misses one.
	mu        sync.Mutex
	notNested map[uint64]bool

	// ns is the container's PID namespace (ByPIDNamespace), open until Close, for the one-ioctl
	// membership check (see visible); nil once closed.
	nsMu sync.RWMutex
	ns   *os.File
}

// ScopeOf returns the scope of the container whose init is the live process init.
func ScopeOf(init int) (*Scope, error) {
	st, err := ReadStatus(init)
	if err != nil {
		return nil, err
	}
	self, err := procfs.NSInode("/proc/self/ns/pid")
	if err != nil {
		return nil, err
	}
	s := &Scope{Init: init, selfNS: self}
	if st.NamespaceInit() {
		s.Kind = ByPIDNamespace
		if s.ns, s.nsIno, err = openNamespace(init); err != nil {
			return nil, err
		}
		if s.nsIno == self {
			s.Close()
			return nil, fmt.Errorf("process %d is PID 1 of the caller's own PID namespace", init)
		}
		if kept, err := containerCgroups(init); err == nil {
			s.cgroupDir, s.pidsCounter = candidateDir(kept), pidsCounterFile(kept)
		}
		return s, nil
	}
	s.Kind = ByCgroup
	if s.cgroups, err = containerCgroups(init); err != nil {
		return nil, err
	}
	s.cgroupDir, s.pidsCounter = candidateDir(s.cgroups), pidsCounterFile(s.cgroups)
	return s, nil
}

// openNamespace opens the PID namespace of process pid and returns it with its inode.
func openNamespace(pid int) (*os.File, uint64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	if err != nil {
		return nil, 0, fmt.Errorf("open the PID namespace of %d: %w", pid, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat the PID namespace of %d: %w", pid, err)
	}
	return f, st.Ino, nil
}

// Close releases what the scope holds open (the container's PID namespace). Membership checks
// still work after it, at the cost of a /proc lookup each.
func (s *Scope) Close() {
	s.nsMu.Lock()
	defer s.nsMu.Unlock()
	if s.ns != nil {
		s.ns.Close()
		s.ns = nil
	}
}

// Namespace is the inode of the container's PID namespace for a PID-namespace scope, 0 for a
// cgroup scope.
func (s *Scope) Namespace() uint64 {
	if s.Kind != ByPIDNamespace {
		return 0
	}
	return s.nsIno
}

// Contains reports whether pid is currently a member of the container (init excluded). A process
// that cannot be read (gone, or a kernel thread) is not a member.
func (s *Scope) Contains(pid int) bool {
	if pid == s.Init {
		return false
	}
	if in, known := s.visible(pid); known {
		return in
	}
	_, ok := s.member(pid)
	return ok
}

// Members lists the members of the container found from the container itself (its cgroup,
// init's children, the caller's children), init excluded, at a cost that grows with the container
// and not with the host: what a drain signals first. A process that entered the PID namespace by
// setns and is in none of these is missed; AllMembers finds it too. The list is a snapshot: use
// OpenMember before signalling any of them.
func (s *Scope) Members() ([]int, error) {
	pids, ok := s.candidates()
	if !ok {
		return s.AllMembers()
	}
	seen := make(map[int]bool, len(pids))
	unique := pids[:0]
	for _, pid := range pids {
		if !seen[pid] {
			seen[pid] = true
			unique = append(unique, pid)
		}
	}
	return s.confirm(unique), nil
}

// confirmChunk is the number of candidates below which confirm checks them on the calling
// goroutine alone: a check is an ioctl of under 1 µs (a readlink of 2–4 µs before Linux 6.8), a
// goroutine's start a few.
const confirmChunk = 512

// confirm returns the PIDs of pids that are members, in their order, checking them on up to
// GOMAXPROCS goroutines at once (each check is an independent lookup in /proc).
func (s *Scope) confirm(pids []int) []int {
	workers := min(runtime.GOMAXPROCS(0), len(pids)/confirmChunk)
	if workers <= 1 {
		members := pids[:0]
		for _, pid := range pids {
			if s.Contains(pid) {
				members = append(members, pid)
			}
		}
		return members
	}
	member := make([]bool, len(pids))
	var wg sync.WaitGroup
	per := (len(pids) + workers - 1) / workers
	for start := 0; start < len(pids); start += per {
		end := min(start+per, len(pids))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := start; i < end; i++ {
				member[i] = s.Contains(pids[i])
			}
		}()
	}
	wg.Wait()
	members := pids[:0]
	for i, pid := range pids {
		if member[i] {
			members = append(members, pid)
		}
	}
	return members
}

// AllMembers lists every member of the container, init excluded, from a full pass over /proc:
// exact, at a cost that grows with the host.
func (s *Scope) AllMembers() ([]int, error) {
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
	h, _, err := s.openMember(pid)
	return h, err
}

// openMember is OpenMember, also returning the member's PID namespace as member does.
func (s *Scope) openMember(pid int) (*Handle, uint64, error) {
	h, err := Open(pid)
	if err != nil {
		return nil, 0, err
	}
	ns, err := s.confirmHandle(h)
	if err != nil {
		h.Close()
		return nil, 0, err
	}
	return h, ns, nil
}

// confirmHandle checks that the process h refers to is a member, returning its PID namespace as
// member does. A process that has been reaped meanwhile (its parent ignores SIGCHLD, or reaped it
// at once) has nothing left to check: its /proc entry is gone, or is already another process's.
// It is ErrGone then, never ErrNotMember, so that a member that exits fast is counted as exited
// rather than dropped as a stranger.
func (s *Scope) confirmHandle(h *Handle) (uint64, error) {
	ns, ok := s.memberByHandle(h)
	if ok {
		return ns, nil
	}
	if errors.Is(h.Signal(0), ErrGone) { // a zombie can still be signalled: only reaped is gone
		return 0, ErrGone
	}
	return 0, ErrNotMember
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
