package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// machine describes where the benchmark ran.
type machine struct {
	date                   time.Time
	nproc                  int
	memory                 string
	kernel                 string
	goVersion              string
	containerd, runc, shim string
	loadStart, loadEnd     string
	hostProcesses          int
	pidMax                 string
	source                 string // the commit the shim was built from, and uncommitted changes
}

func readMachine() machine {
	m := machine{date: time.Now().UTC(), nproc: runtime.NumCPU(), goVersion: runtime.Version(), loadStart: loadAvg()}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kb, ok := statusValue(data, "MemTotal"); ok {
			m.memory = strconv.FormatFloat(float64(kb)/(1<<20), 'f', 1, 64) + " GiB"
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		m.pidMax = strings.TrimSpace(string(data))
	}
	if entries, err := os.ReadDir("/proc"); err == nil {
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				m.hostProcesses++
			}
		}
	}
	return m
}

// readStack reads the versions of the stack's containerd, runc and graceful shim.
func (m *machine) readStack(ctx context.Context, s *stack.Stack) {
	if v, err := s.Client.Version(ctx); err == nil {
		m.containerd = strings.TrimSpace(v.Version + " " + v.Revision)
	}
	m.runc = firstLines(filepath.Join(s.Bin, "runc"), 2, "--version")
	m.source = sourceState()
	m.shim = shimVersion(filepath.Join(s.Dir, "bin", "containerd-shim-graceful-v2"))
}

func firstLines(bin string, n int, args ...string) string {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return "unknown"
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "; ")
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// sourceState names the commit of the module and the files of the shim's build that differ from it.
func sourceState() string {
	root := stack.ModuleRoot()
	head, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown (not a git checkout)"
	}
	state := "commit " + strings.TrimSpace(string(head))
	out, err := exec.Command("git", "-C", root, "status", "--porcelain", "--", "cmd", "shim", "process", "go.mod", "go.sum").Output()
	if err == nil {
		var files []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.TrimSpace(line); len(f) > 3 && !strings.HasSuffix(f, "_test.go") {
				files = append(files, "`"+strings.TrimSpace(f[2:])+"`")
			}
		}
		if len(files) > 0 {
			state += ", with uncommitted changes in " + strings.Join(files, ", ")
		}
	}
	return state
}

// shimVersion condenses `containerd-shim-graceful-v2 -v` into "VERSION (containerd VERSION)".
func shimVersion(bin string) string {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "unknown"
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if fields["Version"] == "" {
		return strings.Join(strings.Fields(string(out)), " ")
	}
	return fmt.Sprintf("%s (containerd library %s)", fields["Version"], fields["containerd"])
}
