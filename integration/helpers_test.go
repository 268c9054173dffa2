package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/process"
)

// lineBuffer collects a command's output and lets a test wait for a line.
type lineBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
	ch  chan struct{}
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	return len(p), nil
}

// WaitLine waits until a line equal to want was written.
func (b *lineBuffer) WaitLine(want string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		b.mu.Lock()
		text := b.buf.String()
		if b.ch == nil {
			b.ch = make(chan struct{})
		}
		ch := b.ch
		b.mu.Unlock()
		for _, line := range strings.Split(text, "\n") {
			if strings.TrimSpace(line) == want {
				return nil
			}
		}
		select {
		case <-ch:
		case <-deadline:
			return &timeoutError{want: want, got: text}
		}
	}
}

type timeoutError struct{ want, got string }

func (e *timeoutError) Error() string {
	return "no line " + strconv.Quote(e.want) + " in " + strconv.Quote(e.got)
}

// writeFile writes a file in a test's temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// zombieChildren lists the zombie children of pid.
func zombieChildren(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var zombies []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := process.ReadStatus(n); err == nil && st.PPid == pid && st.State == 'Z' {
			zombies = append(zombies, n)
		}
	}
	return zombies
}
