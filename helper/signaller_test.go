package helper

import (
	"strconv"
	"strings"
	"testing"

	"github.com/graceful-shim/graceful/internal/procfs"
)

// The signaller refuses to run kill(-1) anywhere but in the namespace it was asked for, and
// never in /proc's (the host's).
func TestSignallerRefusesTheWrongNamespace(t *testing.T) {
	own, err := procfs.NSInode("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	if err := inNamespace(own); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("in the host's namespace: %v, want a refusal", err)
	}
	if err := inNamespace(own + 1); err == nil {
		t.Fatal("in a namespace other than the one asked for: no error")
	}
	var out strings.Builder
	if code := SignallerMain([]string{strconv.FormatUint(own, 10)}, strings.NewReader("15\n"), &out); code == 0 || !strings.HasPrefix(out.String(), Failed) {
		t.Fatalf("SignallerMain in the host's namespace: exit %d, said %q", code, out.String())
	}
}

// A signaller's answers read back as what it wrote; its errors as errors.
func TestParseSignalled(t *testing.T) {
	if from, to, err := ParseSignalled(Signalled + " 12 34"); err != nil || from != 12 || to != 34 {
		t.Fatalf("ParseSignalled = %d, %d, %v", from, to, err)
	}
	if _, _, err := ParseSignalled(Failed + " kill(-1, SIGTERM): operation not permitted"); err == nil || !strings.Contains(err.Error(), "not permitted") {
		t.Fatalf("an error answer: %v", err)
	}
	if _, _, err := ParseSignalled("what"); err == nil {
		t.Fatal("an unexpected answer was accepted")
	}
}
