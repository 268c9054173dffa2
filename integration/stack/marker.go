package stack

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The test containers' scripts tell the host what they did through marker files in /out, a
// directory bind-mounted from the host: every kind of test container reads them with ReadMarker
// and waits for them with WaitFile.

// ReadMarker returns the content of the file name in a container's /out directory dir (host
// side), trimmed, or "" when the container did not write it.
func ReadMarker(dir, name string) string {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// WaitFile waits up to timeout until the file path exists: a marker file, which a container
// writes in its /out directory (path is then on the host side), or a host process's.
func WaitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !FileExists(path) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not written in %v", path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// FileExists reports whether path exists.
func FileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
