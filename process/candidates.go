package process

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The drain finds a container's processes from the container itself, at a cost that grows with the
// container: its cgroup tree's processes, init's children and the shim's (the exec'd processes).
// Each is confirmed (Scope.member) before it is signalled; a process that entered the PID namespace
// by setns from elsewhere is left to the full pass over /proc (hostscan.go).

// candidateDir returns the container's cgroup directory to list candidates from ("" if none):
// init's cgroup on the first hierarchy of entries, the unified one preferred.
func candidateDir(entries []cgroupEntry) string {
	mounts := cgroupMounts()
	best := ""
	for _, e := range entries {
		root, ok := mounts.dir(e.hierarchy)
		if !ok {
			continue
		}
		dir := filepath.Join(root, e.path)
		if e.hierarchy == "0:" {
			return dir
		}
		if best == "" {
			best = dir
		}
	}
	return best
}

// pidsCounterFile returns the pids.current file of the container's cgroup (the tasks of its tree,
// threads included), "" when no pids controller counts them.
func pidsCounterFile(entries []cgroupEntry) string {
	mounts := cgroupMounts()
	for _, e := range entries {
		_, controllers, _ := strings.Cut(e.hierarchy, ":")
		if controllers != "" && !slices.Contains(strings.Split(controllers, ","), "pids") {
			continue
		}
		root, ok := mounts.dir(e.hierarchy)
		if !ok {
			continue
		}
		file := filepath.Join(root, e.path, "pids.current")
		if unix.Access(file, unix.R_OK) == nil {
			return file
		}
	}
	return ""
}

// candidates returns the PIDs that may be members, with repeats and init. ok is false when the
// scope has no cgroup to list: the caller must then read the whole process table.
func (s *Scope) candidates() (pids []int, ok bool) {
	if s.cgroupDir == "" {
		return nil, false
	}
	pids, ok = appendCgroupProcs(nil, s.cgroupDir)
	if !ok {
		return nil, false
	}
	pids = appendChildren(pids, s.Init)
	pids = appendChildren(pids, os.Getpid())
	return pids, true
}

// appendCgroupProcs is listCgroupProcs, reporting false when not every list could be read.
func appendCgroupProcs(pids []int, dir string) ([]int, bool) {
	pids, err := readCgroupTree(pids, dir)
	return pids, err == nil
}

// readCgroupTree is listCgroupProcs (a test injects its failures here).
var readCgroupTree = listCgroupProcs

// listCgroupProcs appends the processes of cgroup dir's tree. Its error wraps fs.ErrNotExist when
// dir is gone; any other (too many open files) says nothing of the processes.
func listCgroupProcs(pids []int, dir string) ([]int, error) {
	pids, err := appendFileInts(pids, filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return pids, fmt.Errorf("list %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return pids, fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			// A sub-cgroup removed meanwhile holds no process.
			if pids, err = listCgroupProcs(pids, filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return pids, err
			}
		}
	}
	return pids, nil
}

// appendChildren appends the children of every thread of process pid (none when it is gone).
func appendChildren(pids []int, pid int) []int {
	children, _ := childrenOf(pid)
	return append(pids, children...)
}

// childrenOf lists pid's children from every thread's file: a child is under its forking thread.
func childrenOf(pid int) ([]int, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("threads of %d: %w", pid, err)
	}
	tids, _ := f.Readdirnames(-1)
	f.Close()
	var children []int
	for _, tid := range tids {
		children, _ = appendFileInts(children, dir+tid+"/children") // an error: the thread exited
	}
	return children, nil
}

// appendInts appends the positive decimal numbers of a list separated by anything but digits.
func appendInts(pids []int, data []byte) []int {
	n, in := 0, false
	for _, c := range data {
		if c >= '0' && c <= '9' {
			n, in = n*10+int(c-'0'), true
			continue
		}
		if in && n > 0 {
			pids = append(pids, n)
		}
		n, in = 0, false
	}
	if in && n > 0 {
		pids = append(pids, n)
	}
	return pids
}

// listBufSize is the read size for PID lists: a seq_file renders its content anew at each read.
const listBufSize = 64 << 10

var listBufs = sync.Pool{New: func() any { b := make([]byte, listBufSize); return &b }}

// appendFileInts appends the PIDs listed in the file at path (cgroup.procs, a children file).
func appendFileInts(pids []int, path string) ([]int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pids, err
	}
	defer unix.Close(fd)
	bp := listBufs.Get().(*[]byte)
	defer listBufs.Put(bp)
	buf, n := *bp, 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf))...)
		}
		k, err := unix.Read(fd, buf[n:])
		if err != nil && err != unix.EINTR {
			return pids, err
		}
		n += max(k, 0)
		// A seq_file may hand out a page per read (cgroup.procs does): only 0 is the end.
		if err == nil && k == 0 {
			break
		}
	}
	if cap(buf) > cap(*bp) {
		*bp = buf
	}
	return appendInts(pids, buf[:n]), nil
}

// mountTable maps cgroup hierarchies, as /proc/PID/cgroup names them ("4:pids", "0:"), to the
// directories where the caller sees their root.
type mountTable struct {
	unified string            // cgroup2 mount point, "" when none
	v1      map[string]string // controller or "name=..." → mount point
}

var (
	mountsOnce sync.Once
	mounts     mountTable
)

// cgroupMounts returns the caller's cgroup mounts, read once (the shim's mounts do not change).
func cgroupMounts() mountTable {
	mountsOnce.Do(func() { mounts = readCgroupMounts("/proc/self/mountinfo") })
	return mounts
}

// readCgroupMounts parses mountinfo for the readable cgroup mounts of a hierarchy's root (a
// sub-cgroup's mount, as in a cgroup namespace, cannot be joined with /proc/PID/cgroup paths).
func readCgroupMounts(path string) mountTable {
	t := mountTable{v1: map[string]string{}}
	f, err := os.Open(path)
	if err != nil {
		return t
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || fields[3] != "/" {
			continue
		}
		point := unescapeMount(fields[4])
		if tail[0] != "cgroup2" && tail[0] != "cgroup" {
			continue
		}
		// A later mount may hide an earlier one (cgroup2 over /sys/fs/cgroup): last readable wins.
		if _, err := os.Stat(filepath.Join(point, "cgroup.procs")); err != nil {
			continue
		}
		if tail[0] == "cgroup2" {
			t.unified = point
			continue
		}
		for _, opt := range strings.Split(tail[2], ",") {
			t.v1[opt] = point
		}
	}
	return t
}

// dir returns the mount point of hierarchy ("ID:controllers").
func (t mountTable) dir(hierarchy string) (string, bool) {
	_, controllers, ok := strings.Cut(hierarchy, ":")
	if !ok {
		return "", false
	}
	if controllers == "" {
		return t.unified, t.unified != ""
	}
	// Every controller of a v1 hierarchy is mounted at the same point: the first names it.
	first, _, _ := strings.Cut(controllers, ",")
	p, ok := t.v1[first]
	return p, ok
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
