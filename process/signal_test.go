package process

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Every form a user or a client writes a signal in is accepted where a signal is, real-time
// signals included (systemd images stop on SIGRTMIN+3; CRI names it SIGRTMINPLUS3), and the name
// a report gives parses back to the same signal.
func TestParseSignalAcceptsEveryForm(t *testing.T) {
	for in, want := range map[string]unix.Signal{
		"SIGTERM": unix.SIGTERM, "term": unix.SIGTERM, " 15 ": unix.SIGTERM, "sigquit": unix.SIGQUIT,
		"SIGRTMIN+3": 37, "RTMIN+3": 37, "rtmin+3": 37, "SIGRTMIN": 34, "RTMIN": 34, "SIGRTMIN+0": 34,
		"SIGRTMAX": 64, "RTMAX-1": 63, "SIGRTMAX-30": 34, "SIGRTMIN+30": 64,
		"SIGRTMINPLUS3": 37, "SIGRTMAXMINUS1": 63, "37": 37, "64": 64, "34": 34,
	} {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %d, %v; want %d", in, got, err, want)
			continue
		}
		if back, err := ParseSignal(SignalName(got)); err != nil || back != got {
			t.Errorf("SignalName(%d) = %q parses back as %d, %v", got, SignalName(got), back, err)
		}
	}
	if got := SignalName(37); got != "SIGRTMIN+3" {
		t.Errorf("SignalName(37) = %q, want SIGRTMIN+3", got)
	}
}

// A malformed or out-of-range signal is refused with an error that says what is accepted.
func TestParseSignalRefusesWithTheAcceptedForms(t *testing.T) {
	for _, in := range []string{"", "SIGFOO", "RTMIN-1", "RTMAX+1", "SIGRTMIN+31", "SIGRTMAX-31", "RTMIN+x", "RTMINX", "32", "33", "65", "0", "-1"} {
		_, err := ParseSignal(in)
		if err == nil {
			t.Errorf("ParseSignal(%q) was accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), "accepted") && !strings.Contains(err.Error(), "SIGRTMIN (34) to SIGRTMAX (64)") {
			t.Errorf("ParseSignal(%q): %v does not say what is accepted", in, err)
		}
	}
}
