package process

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
)

// The container's cgroups, read from /proc/PID/cgroup: where its candidates are listed from.

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
