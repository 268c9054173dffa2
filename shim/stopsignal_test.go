package shim

import (
	"testing"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The shim's table of CRI's Signal enum is CRI's own, value by value.
func TestCRISignalNamesMatchTheCRIAPI(t *testing.T) {
	if len(criSignalNames) != len(runtimeapi.Signal_name) {
		t.Fatalf("%d names, CRI has %d", len(criSignalNames), len(runtimeapi.Signal_name))
	}
	for v, name := range runtimeapi.Signal_name {
		if got := "SIGNAL_" + criSignalNames[v]; got != name {
			t.Errorf("value %d: %s, CRI says %s", v, got, name)
		}
	}
}

func TestStopSignalOfTheContainerRecord(t *testing.T) {
	cri := func(json string) map[string]*anypb.Any {
		return map[string]*anypb.Any{criMetadataExtension: {TypeUrl: "io.containerd.cri.v1/ContainerMetadata", Value: []byte(json)}}
	}
	for _, tc := range []struct {
		name string
		c    *containersapi.Container
		want unix.Signal
	}{
		{"none", &containersapi.Container{}, 0},
		{"ctr / nerdctl label", &containersapi.Container{Labels: map[string]string{StopSignalLabel: "SIGQUIT"}}, unix.SIGQUIT},
		{"CRI image StopSignal", &containersapi.Container{Extensions: cri(`{"Version":"v1","Metadata":{"ID":"x","StopSignal":"SIGINT"}}`)}, unix.SIGINT},
		// lifecycle.stopSignal (runtime.v1.Signal SIGNAL_SIGUSR1 = 29) wins over the image's.
		{"CRI lifecycle.stopSignal", &containersapi.Container{Extensions: cri(`{"Version":"v1","Metadata":{"Config":{"stop_signal":29},"StopSignal":"SIGINT"}}`)}, unix.SIGUSR1},
		// systemd images: the label as ctr and nerdctl record it, CRI's name (SIGNAL_SIGRTMINPLUS3 =
		// 38) and the image's StopSignal as CRI keeps it.
		{"real-time label", &containersapi.Container{Labels: map[string]string{StopSignalLabel: "SIGRTMIN+3"}}, 37},
		{"CRI real-time lifecycle.stopSignal", &containersapi.Container{Extensions: cri(`{"Version":"v1","Metadata":{"Config":{"stop_signal":38}}}`)}, 37},
		{"CRI real-time image StopSignal", &containersapi.Container{Extensions: cri(`{"Version":"v1","Metadata":{"StopSignal":"RTMIN+3"}}`)}, 37},
		{"CRI without a stop signal", &containersapi.Container{Extensions: cri(`{"Version":"v1","Metadata":{"Config":{}}}`)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, where, err := stopSignalOf(record(t, tc.c))
			if err != nil || got != tc.want || (got != 0) != (where != "") {
				t.Fatalf("stopSignalOf = %v from %q (%v), want %v", got, where, err, tc.want)
			}
		})
	}
	if _, _, err := stopSignalOf(record(t, &containersapi.Container{Labels: map[string]string{StopSignalLabel: "SIGNOPE"}})); err == nil {
		t.Fatal("a bad label was accepted")
	}
	if _, _, err := stopSignalOf(record(t, &containersapi.Container{Extensions: cri(`{"Version":"v1","Metadata":{"Config":{"stop_signal":99}}}`)})); err == nil {
		t.Fatal("a CRI stop_signal outside the enum was accepted")
	}
}

// record is c as the lookup reads it from containerd's answer: a GetContainerResponse in wire
// form, decoded by decodeGetContainerResponse.
func record(t *testing.T, c *containersapi.Container) containerRecord {
	t.Helper()
	c.ID, c.Image, c.Runtime = "x", "docker.io/library/busybox:latest", &containersapi.Container_Runtime{Name: RuntimeName}
	c.CreatedAt = timestamppb.Now()
	b, err := proto.Marshal(&containersapi.GetContainerResponse{Container: c})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeGetContainerResponse(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return rec
}

// A truncated answer is an error, not a record without a stop signal.
func TestTruncatedContainerRecordIsAnError(t *testing.T) {
	b, err := proto.Marshal(&containersapi.GetContainerResponse{Container: &containersapi.Container{ID: "x", Labels: map[string]string{StopSignalLabel: "SIGQUIT"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeGetContainerResponse(b[:len(b)-3]); err == nil {
		t.Fatal("a truncated GetContainerResponse decoded")
	}
}

func TestRecordedStopSignalNeverOverridesAnExplicitList(t *testing.T) {
	p, added := DefaultPolicy().WithRecordedStopSignal(unix.SIGQUIT)
	if !added || !p.IsStopSignal(unix.SIGQUIT) || !p.IsStopSignal(unix.SIGTERM) {
		t.Fatalf("default policy: %v (added %v): want TERM and QUIT", p.StopSignals, added)
	}
	explicit, err := ApplyAnnotations(DefaultPolicy(), map[string]string{AnnotationStopSignals: "SIGTERM"})
	if err != nil {
		t.Fatal(err)
	}
	if p, added := explicit.WithRecordedStopSignal(unix.SIGQUIT); added || p.IsStopSignal(unix.SIGQUIT) {
		t.Fatalf("an explicit stop-signals annotation lost to the recorded signal: %v", p.StopSignals)
	}
	cfg, err := ParseConfigFile([]byte(`stop_signals = ["SIGTERM"]`), "f.toml")
	if err != nil {
		t.Fatal(err)
	}
	if p, added := cfg.Policy.WithRecordedStopSignal(unix.SIGQUIT); added || p.IsStopSignal(unix.SIGQUIT) {
		t.Fatalf("an explicit stop_signals key lost to the recorded signal: %v", p.StopSignals)
	}
	if _, added := DefaultPolicy().WithRecordedStopSignal(unix.SIGKILL); added {
		t.Fatal("SIGKILL became a stop signal")
	}
}
