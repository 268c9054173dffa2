package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestParseConfigFileGracefulAndRuncKeys(t *testing.T) {
	cfg, err := ParseConfigFile([]byte(`
grace_period = "30s"
stop_signals = ["SIGTERM", "INT", "SIGRTMIN+3"]
drain_signal = "SIGUSR1"
BinaryName = "/usr/local/bin/runc"
systemd_cgroup = true
root = "/run/other-runc"
`), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	if p.GracePeriod != 30*time.Second || p.DrainSignal != unix.SIGUSR1 || !p.IsStopSignal(unix.SIGINT) || !p.IsStopSignal(unix.SIGTERM) || !p.IsStopSignal(37) {
		t.Fatalf("policy %s", p)
	}
	if cfg.Runc.BinaryName != "/usr/local/bin/runc" || !cfg.Runc.SystemdCgroup || cfg.Runc.Root != "/run/other-runc" {
		t.Fatalf("runc options %+v", cfg.Runc)
	}
}

func TestParseConfigFileErrorsNameTheKey(t *testing.T) {
	for input, want := range map[string][]string{
		`grace_period = 10`:            {`key "grace_period"`, "Go duration"},
		`grace_period = "-1s"`:         {`key "grace_period"`, "between 0s and 1h0m0s"},
		`stop_signals = "SIGKILL"`:     {`key "stop_signals"`, "SIGKILL cannot be a stop signal"},
		`stop_signals = ""`:            {`key "stop_signals"`, "at least one signal"},
		`drain_signal = "SIGSTOP"`:     {`key "drain_signal"`, "cannot be a drain signal"},
		`systemd_cgroup = "yes"`:       {`key "systemd_cgroup"`, "true or false"},
		`io_uid = -1`:                  {`key "io_uid"`, "whole number"},
		`nonsense = 1`:                 {`unknown key "nonsense"`, "grace_period"},
		`grace_period = "1s"` + "\n[x": {"not valid TOML"},
	} {
		_, err := ParseConfigFile([]byte(input), "f.toml")
		if err == nil {
			t.Errorf("%q: no error", input)
			continue
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not mention %q", input, err, w)
			}
		}
	}
}

func TestApplyAnnotations(t *testing.T) {
	p, err := ApplyAnnotations(DefaultPolicy(), map[string]string{
		AnnotationGracePeriod: "2m",
		AnnotationStopSignals: "SIGQUIT, SIGTERM",
		AnnotationDrainSignal: "15",
		"unrelated":           "x",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.GracePeriod != 2*time.Minute || !p.IsStopSignal(unix.SIGQUIT) || p.DrainSignal != unix.SIGTERM {
		t.Fatalf("policy %s", p)
	}
	// Real-time signals, as systemd-in-a-container images stop.
	p, err = ApplyAnnotations(DefaultPolicy(), map[string]string{AnnotationStopSignals: "SIGRTMIN+3,RTMAX-1", AnnotationDrainSignal: "SIGRTMIN+4"})
	if err != nil || !p.IsStopSignal(37) || !p.IsStopSignal(63) || p.DrainSignal != 38 {
		t.Fatalf("real-time signals: policy %s, %v", p, err)
	}
	_, err = ApplyAnnotations(DefaultPolicy(), map[string]string{AnnotationPrefix + "grace": "1s"})
	if err == nil || !strings.Contains(err.Error(), AnnotationGracePeriod) {
		t.Fatalf("unknown annotation: %v", err)
	}
}

func bundleWith(t *testing.T, annotations string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"annotations":{`+annotations+`}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestResolveTranslatesCRIOptionsToRuncOptions(t *testing.T) {
	t.Setenv(ConfigFileEnv, filepath.Join(t.TempDir(), "missing.toml"))
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("grace_period = \"3s\"\nSystemdCgroup = true\n")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Resolve(opts, bundleWith(t, `"io.containerd.graceful.v2.grace-period":"4s"`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Policy.GracePeriod != 4*time.Second {
		t.Fatalf("annotation must win over the options file: %s", s.Policy)
	}
	v, err := typeurl.UnmarshalAny(s.RuncOptions)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := v.(*options.Options); !ok || !o.SystemdCgroup {
		t.Fatalf("runc options %#v", v)
	}
}

func TestResolvePassesRuncOptionsThrough(t *testing.T) {
	defaults := filepath.Join(t.TempDir(), "graceful.toml")
	os.WriteFile(defaults, []byte(`grace_period = "7s"`), 0o644)
	t.Setenv(ConfigFileEnv, defaults)
	opts, _ := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "crun"})
	s, err := Resolve(opts, bundleWith(t, `"io.kubernetes.cri.container-type":"sandbox"`))
	if err != nil {
		t.Fatal(err)
	}
	if s.RuncOptions != opts || s.Policy.GracePeriod != 7*time.Second || !s.Policy.Passthrough {
		t.Fatalf("settings %+v", s)
	}
}

func TestResolveRejectsUnknownOptionTypes(t *testing.T) {
	for _, opts := range []*anypb.Any{
		{TypeUrl: "example.com/Unknown", Value: []byte{1, 2, 3}},
		{TypeUrl: "runtimeoptions.v1.Options", Value: []byte{0xff, 0xff}},
	} {
		_, err := Resolve(opts, bundleWith(t, ""))
		if err == nil || !strings.Contains(err.Error(), "accepted containerd.runc.v1.Options and runtimeoptions.v1.Options") {
			t.Errorf("%s: error %v", opts.TypeUrl, err)
		}
	}
}

func TestKubernetesBudgetLeavesAMargin(t *testing.T) {
	for value, want := range map[string]time.Duration{
		"30": 27 * time.Second, "5": 4 * time.Second, "120": 115 * time.Second, "1": 0,
		"0": 0, "-3": 0, "x": 0,
	} {
		if got := KubernetesBudget(value); got != want {
			t.Errorf("KubernetesBudget(%q) = %v, want %v", value, got, want)
		}
	}
}

// A pod author controls the grace period: a huge value must give a huge budget (no cut), never one
// that a Duration overflow wrapped to a few seconds or to none.
func TestKubernetesBudgetOfAHugeGracePeriodDoesNotWrap(t *testing.T) {
	for _, value := range []string{"9223372037", "18446744104", "9223372036854775807", "4294967296"} {
		if got := KubernetesBudget(value); got < MaxGracePeriod {
			t.Errorf("KubernetesBudget(%q) = %v, want at least the largest grace period %v", value, got, MaxGracePeriod)
		}
	}
}

func TestStopOrderParsing(t *testing.T) {
	p, err := ApplyAnnotations(DefaultPolicy(), map[string]string{AnnotationStopOrder: "Init-First"})
	if err != nil || p.StopOrder != InitFirst {
		t.Fatalf("stop order %q (%v)", p.StopOrder, err)
	}
	if DefaultPolicy().StopOrder != Auto {
		t.Fatal("default stop order is not auto")
	}
	_, err = ParseConfigFile([]byte(`stop_order = "parents-first"`), "f.toml")
	if err == nil || !strings.Contains(err.Error(), "auto, init-first, children-first") {
		t.Fatalf("bad stop order: %v", err)
	}
}

// contrib/graceful.toml documents every key: with all of them uncommented it must parse.
func TestContribDefaultsFileParses(t *testing.T) {
	data, err := os.ReadFile("../contrib/graceful.toml")
	if err != nil {
		t.Fatal(err)
	}
	var uncommented []string
	keys := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "#") && strings.Contains(line, " = ") && !strings.HasPrefix(line, "# ") {
			uncommented = append(uncommented, strings.TrimPrefix(line, "#"))
			keys++
		}
	}
	cfg, err := ParseConfigFile([]byte(strings.Join(uncommented, "\n")), "contrib/graceful.toml")
	if err != nil {
		t.Fatal(err)
	}
	if want := 6 + len(runcKeys); keys != want {
		t.Fatalf("contrib/graceful.toml shows %d keys, want all %d", keys, want)
	}
	if cfg.Policy.GracePeriod != 10*time.Second || cfg.Policy.StopOrder != Auto || cfg.Policy.Init {
		t.Fatalf("documented defaults differ from the built-in ones: %s", cfg.Policy)
	}
}

// A stop signal other than the drain signal goes to the processes that handle it, unless a drain
// signal was set explicitly (annotation or options file), which then goes to all.
func TestDrainStopSignal(t *testing.T) {
	p := DefaultPolicy()
	if got := p.DrainStopSignal(unix.SIGQUIT); got != unix.SIGQUIT {
		t.Fatalf("default policy, stop on SIGQUIT: %v, want SIGQUIT", got)
	}
	if got := p.DrainStopSignal(unix.SIGTERM); got != 0 {
		t.Fatalf("default policy, stop on SIGTERM: %v, want 0", got)
	}
	explicit, err := ApplyAnnotations(p, map[string]string{AnnotationDrainSignal: "SIGTERM"})
	if err != nil {
		t.Fatal(err)
	}
	if got := explicit.DrainStopSignal(unix.SIGQUIT); got != 0 {
		t.Fatalf("explicit drain signal, stop on SIGQUIT: %v, want 0", got)
	}
	cfg, err := ParseConfigFile([]byte(`drain_signal = "SIGTERM"`), "f.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Policy.DrainStopSignal(unix.SIGQUIT); got != 0 {
		t.Fatalf("drain signal from the options file, stop on SIGQUIT: %v, want 0", got)
	}
}

func TestResolveNamesTheKubernetesWorkload(t *testing.T) {
	t.Setenv(ConfigFileEnv, filepath.Join(t.TempDir(), "missing.toml"))
	s, err := Resolve(nil, bundleWith(t, `"io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-name":"web-0",`+
		`"io.kubernetes.cri.sandbox-uid":"8f1c","io.kubernetes.cri.container-name":"nginx"`))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Workload{Namespace: "shop", Pod: "web-0", PodUID: "8f1c", Container: "nginx"}); s.Workload == nil || *s.Workload != want {
		t.Fatalf("workload %+v, want %+v", s.Workload, want)
	}
	if s, err = Resolve(nil, bundleWith(t, `"io.kubernetes.cri.sandbox-name":"web-0"`)); err != nil || s.Workload != nil {
		t.Fatalf("a spec without a container name: workload %+v (%v), want none", s.Workload, err)
	}
}
