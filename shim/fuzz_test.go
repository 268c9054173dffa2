package shim

import (
	"strings"
	"testing"
)

// Whatever the bytes, parsing an options file never panics, and a file it accepts yields a policy
// within the documented bounds.
func FuzzParseConfigFile(f *testing.F) {
	for _, seed := range []string{
		`grace_period = "10s"`,
		"stop_signals = [\"SIGTERM\", \"INT\"]\ndrain_signal = \"15\"",
		`BinaryName = "runc"` + "\nsystemd_cgroup = true\nio_uid = 4294967295",
		`grace_period = "-1h"`, `io_gid = -5`, `x = 1`, "[table]\nk = 1", `grace_period = 99999999999999999999`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfigFile(data, "fuzz.toml")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		checkPolicy(t, cfg.Policy)
	})
}

// Whatever the annotation values, applying them never panics, and an accepted value is in bounds.
func FuzzApplyAnnotations(f *testing.F) {
	f.Add("10s", "SIGTERM,SIGINT", "TERM")
	f.Add("-5s", "", "KILL")
	f.Add("1h0m1s", "9,,", "64")
	f.Add("NaN", "SIGRTMIN", "0")
	f.Fuzz(func(t *testing.T, grace, stops, drain string) {
		p, err := ApplyAnnotations(DefaultPolicy(), map[string]string{
			AnnotationGracePeriod: grace,
			AnnotationStopSignals: stops,
			AnnotationDrainSignal: drain,
		})
		if err != nil {
			if !strings.Contains(err.Error(), AnnotationPrefix) {
				t.Fatalf("error does not name the annotation: %v", err)
			}
			return
		}
		checkPolicy(t, p)
	})
}

func checkPolicy(t *testing.T, p Policy) {
	t.Helper()
	if p.GracePeriod < 0 || p.GracePeriod > MaxGracePeriod {
		t.Fatalf("grace period %v out of bounds", p.GracePeriod)
	}
	if len(p.StopSignals) == 0 {
		t.Fatal("no stop signal")
	}
	for _, s := range append(p.StopSignals, p.DrainSignal) {
		if s < 1 || s > 64 || s == 9 || s == 19 {
			t.Fatalf("signal %d accepted", s)
		}
	}
}
