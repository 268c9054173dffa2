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
	// ByPIDNamespace: init is PID 1 of its own PID namespace; the members are every process in it
	// or in a namespace nested in it (exactly what the kernel's zap would kill).
	ByPIDNamespace ScopeKind = "pid-namespace"
	// ByCgroup: the PID namespace is shared (pod, host); the members are the processes in init's
	// cgroups or below, on the hierarchies that tell the container apart (see ScopeOf).
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
	// cgroupDir is where candidates are listed from; "" if no cgroup tells the container apart.
	cgroupDir string
	// pidsCounter is the cgroup's pids.current file ("" without a pids controller).
	pidsCounter string

	// notNested caches the namespaces (by inode) found not nested in the container's. Only this
	// answer is safe to cache: after inode reuse a stale "nested" could reach a stranger.
	mu        sync.Mutex
	notNested map[uint64]bool

	// ns is the container's PID namespace for the one-ioctl check (visible); nil once closed.
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

// Close releases the container's PID namespace; membership checks then cost a /proc lookup each.
func (s *Scope) Close() {
	s.nsMu.Lock()
	defer s.nsMu.Unlock()
	if s.ns != nil {
		s.ns.Close()
		s.ns = nil
	}
}

// Namespace is the inode of the container's PID namespace, 0 for a cgroup scope.
func (s *Scope) Namespace() uint64 {
	if s.Kind != ByPIDNamespace {
		return 0
	}
	return s.nsIno
}

// Contains reports whether pid is now a member (init excluded); an unreadable process is not.
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

// Members lists the members found from the container itself (its cgroup, init's and the caller's
// children), init excluded, at a cost that grows with the container. It misses a process that
// entered by setns from elsewhere (AllMembers does not); use OpenMember before signalling any.
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

// confirmChunk is the fewest candidates per goroutine of confirm: a check costs less than a start.
const confirmChunk = 512

// confirm returns the members among pids, in order, checked on up to GOMAXPROCS goroutines.
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

// AllMembers lists every member, init excluded, from a full /proc pass: exact, but host-sized.
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

// OpenMember returns a pidfd for pid if, and only if, it is a member. The pidfd is opened before
// the check, so a signal through it hits the checked process or fails, never a recycled PID.
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

// confirmHandle checks that h's process is a member, returning its PID namespace. One reaped
// meanwhile has no /proc entry left to check: it is ErrGone, never ErrNotMember, so that a member
// exiting fast is counted as exited rather than dropped as a stranger.
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
