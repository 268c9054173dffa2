package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

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

// nsGetTgidInPidns is NS_GET_TGID_IN_PIDNS, _IOR(0xb7, 0x9, int) (Linux 6.8): the PID, in the
// namespace the descriptor refers to, of the process whose PID in the caller's namespace is the
// argument; ESRCH when that namespace does not see it.
const nsGetTgidInPidns = 0x8004b709

// pidnsTranslationUnsupported is set once the kernel has refused NS_GET_TGID_IN_PIDNS.
var pidnsTranslationUnsupported atomic.Bool

// visible reports, for a PID-namespace scope, whether the container's namespace sees process
// pid: exactly when pid is in it or in a namespace nested in it, its members. It is one ioctl on
// the open namespace, no /proc lookup. known is false when the kernel cannot tell (before Linux
// 6.8, a cgroup scope, a closed scope): member must decide then.
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

// member reports whether pid is a member and, for a PID-namespace scope, returns the inode of its
// PID namespace (0 for a cgroup scope, which does not read it).
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

// threadWithin reports whether one of pid's threads other than its main one is in the container's
// cgroups, for a process whose main thread has exited while the others run on: cgroup v1 reports
// an exiting task in the root ("/") of every v1 hierarchy, where the unified hierarchy keeps its
// cgroup. Only such a process is looked at — its unified cgroup within the container's, every
// other hierarchy that does not match at "/" — so that the host's processes cost nothing more.
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

// pidfdGetPidNamespace is PIDFD_GET_PID_NAMESPACE, _IO(0xFF, 5) (Linux 6.11): a descriptor of the
// PID namespace of the process a pidfd refers to.
const pidfdGetPidNamespace = 0xff05

// pidfdNamespaceUnsupported is set once the kernel has refused PIDFD_GET_PID_NAMESPACE.
var pidfdNamespaceUnsupported atomic.Bool

// memberByHandle is member for the process that h refers to. For a PID-namespace scope it reads the
// namespace through the pidfd where the kernel can (no /proc path lookup, and no PID to be
// recycled), else through /proc.
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

// nestedFrom reports whether the PID namespace open on fd (which it closes) is nested in the
// container's, walking up its parents; it stops at the caller's namespace (EPERM above it). ok is
// false when the walk failed (the process went away), so that no verdict is cached.
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

// cgroupEntry is one line of /proc/PID/cgroup: a hierarchy ("ID:controllers", "0:" for the cgroup
// v2 unified hierarchy) and the process's cgroup path in it.
type cgroupEntry struct {
	hierarchy string
	path      string
}

// parseCgroups parses the content of /proc/PID/cgroup. Malformed lines are skipped.
func parseCgroups(data []byte) []cgroupEntry {
	var entries []cgroupEntry
	for _, line := range strings.Split(string(data), "\n") {
		i := strings.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := strings.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		j += i + 1
		entries = append(entries, cgroupEntry{hierarchy: line[:j], path: line[j+1:]})
	}
	return entries
}

// readCgroups reads and parses /proc/PID/cgroup (PID "self" for the caller).
func readCgroups(pid string) ([]cgroupEntry, []byte, error) {
	data, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return nil, nil, fmt.Errorf("read cgroups of %s: %w", pid, err)
	}
	return parseCgroups(data), data, nil
}

// containerCgroups returns the cgroups of the container whose init (not a PID namespace's PID 1)
// is init, on the hierarchies that tell the container apart from the host. It refuses a container
// that no hierarchy tells apart: signalling its "members" would signal the host.
func containerCgroups(init int) ([]cgroupEntry, error) {
	initCgroups, initData, err := readCgroups(strconv.Itoa(init))
	if err != nil {
		return nil, err
	}
	own, ownData, err := readCgroups("self")
	if err != nil {
		return nil, err
	}
	if bytes.Equal(ownData, initData) {
		return nil, fmt.Errorf("process %d shares the caller's cgroups and PID namespace: its container cannot be told apart from the host", init)
	}
	hostInit, _, err := readCgroups("1")
	if err != nil {
		return nil, err
	}
	kept := distinguishing(initCgroups, hostInit, own)
	if len(kept) == 0 {
		return nil, fmt.Errorf("process %d shares the caller's PID namespace and none of its cgroups (%q) tells its container apart from the host: each is the root, or holds PID 1 or the caller", init, strings.TrimSpace(string(initData)))
	}
	return kept, nil
}

// distinguishing returns the entries of a container's init that tell the container apart: those
// whose cgroup is not the root, not an ancestor of (or the same as) host PID 1's cgroup in that
// hierarchy, nor of the caller's, and is a plain absolute path (a cgroup outside the caller's
// cgroup namespace shows as "/.." and cannot be compared).
func distinguishing(init, hostInit, own []cgroupEntry) []cgroupEntry {
	var kept []cgroupEntry
	for _, e := range init {
		if e.path == "/" || !path.IsAbs(e.path) || path.Clean(e.path) != e.path || strings.Contains(e.path, "/..") {
			continue
		}
		if p, ok := lookupCgroup(hostInit, e.hierarchy); ok && within(p, e.path) {
			continue
		}
		if p, ok := lookupCgroup(own, e.hierarchy); ok && within(p, e.path) {
			continue
		}
		kept = append(kept, e)
	}
	return kept
}

// withinAll reports whether a process with cgroups entries is, on every hierarchy of container,
// in the container's cgroup or below it.
func withinAll(entries, container []cgroupEntry) bool {
	for _, c := range container {
		p, ok := lookupCgroup(entries, c.hierarchy)
		if !ok || !within(p, c.path) {
			return false
		}
	}
	return true
}

// lookupCgroup returns the path of hierarchy in entries.
func lookupCgroup(entries []cgroupEntry, hierarchy string) (string, bool) {
	for _, e := range entries {
		if e.hierarchy == hierarchy {
			return e.path, true
		}
	}
	return "", false
}

// within reports whether cgroup path p is base or a descendant of it.
func within(p, base string) bool {
	return p == base || base == "/" || strings.HasPrefix(p, base+"/")
}
