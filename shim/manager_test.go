package shim

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeRunc writes a runc stand-in whose `features` reports user namespaces and idmap mounts, the
// features CRI needs for hostUsers: false pods.
func fakeRunc(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-runc")
	script := `#!/bin/sh
[ "$1" = features ] || exit 1
echo '{"ociVersionMin":"1.0.0","ociVersionMax":"1.2.0","linux":{"namespaces":["pid","user"],"mountExtensions":{"idmap":{"enabled":true}}}}'
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// noDefaultsFile points the host defaults file at a missing file.
func noDefaultsFile(t *testing.T) {
	t.Setenv(ConfigFileEnv, filepath.Join(t.TempDir(), "missing.toml"))
}

func marshalAny(t *testing.T, v any) []byte {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checkInfo checks that info carries the fake runc's features and runc options naming it.
func checkInfo(t *testing.T, info *types.RuntimeInfo, runc string) {
	t.Helper()
	if info.GetName() != RuntimeName {
		t.Errorf("info name %q, want %q", info.GetName(), RuntimeName)
	}
	if info.GetFeatures() == nil {
		t.Fatal("info has no features: CRI would refuse user-namespace pods")
	}
	v, err := typeurl.UnmarshalAny(info.GetFeatures())
	if err != nil {
		t.Fatal(err)
	}
	f, ok := v.(*features.Features)
	if !ok || f.Linux == nil || !slices.Contains(f.Linux.Namespaces, "user") {
		t.Errorf("features %+v do not report the fake runc's user namespaces", v)
	}
	o, err := typeurl.UnmarshalAny(info.GetOptions())
	if err != nil {
		t.Fatalf("info options: %v", err)
	}
	if ro, ok := o.(*options.Options); !ok || ro.BinaryName != runc {
		t.Errorf("info options %+v, want runc options with binary_name %s", o, runc)
	}
}

// CRI's runtimeoptions.v1.Options (form A) reach the runc manager's Info as the runc options of
// the options file: Info reports the features of the file's runc binary instead of failing with
// "invalid type *runtimeoptions.Options".
func TestManagerInfoTranslatesRuntimeOptions(t *testing.T) {
	noDefaultsFile(t)
	runc := fakeRunc(t)
	configPath := filepath.Join(t.TempDir(), "graceful.toml")
	if err := os.WriteFile(configPath, []byte("grace_period = \"3s\"\nbinary_name = \""+runc+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string]any{
		"ConfigPath": &runtimeoptions.Options{ConfigPath: configPath},
		"ConfigBody": &runtimeoptions.Options{ConfigBody: []byte("BinaryName = \"" + runc + "\"\n")},
		"runc":       &options.Options{BinaryName: runc},
	} {
		t.Run(name, func(t *testing.T) {
			info, err := NewManager().Info(context.Background(), bytes.NewReader(marshalAny(t, opts)))
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			checkInfo(t, info, runc)
		})
	}
}

// Without runtime options, Info takes the runc keys of the host defaults file, as Create does.
func TestManagerInfoDefaultsFile(t *testing.T) {
	runc := fakeRunc(t)
	defaults := filepath.Join(t.TempDir(), "defaults.toml")
	if err := os.WriteFile(defaults, []byte("binary_name = \""+runc+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ConfigFileEnv, defaults)
	info, err := NewManager().Info(context.Background(), bytes.NewReader(nil))
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	checkInfo(t, info, runc)
}

// A broken options file fails Info with the file's error.
func TestManagerInfoBadOptionsFile(t *testing.T) {
	noDefaultsFile(t)
	opts := &runtimeoptions.Options{ConfigBody: []byte("no_such_key = 1\n")}
	if _, err := NewManager().Info(context.Background(), bytes.NewReader(marshalAny(t, opts))); err == nil {
		t.Fatal("Info accepted an options file with an unknown key")
	}
}

// recordingShim is a shim manager that records the params of Start.
type recordingShim struct {
	shim.Shim
	params *bootapi.BootstrapParams
}

func (r *recordingShim) Start(_ context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	r.params = params
	return &bootapi.BootstrapResult{Address: "unix:///test"}, nil
}

func (r *recordingShim) Info(context.Context, io.Reader) (*types.RuntimeInfo, error) {
	return &types.RuntimeInfo{}, nil
}

// runcExtension returns the runc options among params' extensions, or nil.
func runcExtension(t *testing.T, params *bootapi.BootstrapParams) *options.Options {
	t.Helper()
	var o options.Options
	found, err := params.FindExtension(&o)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		return nil
	}
	return &o
}

// Start hands the runc manager the options file's runc options, whose shim_cgroup it applies to
// the shim process; other extensions are kept, runtimeoptions dropped.
func TestManagerStartTranslatesShimCgroup(t *testing.T) {
	noDefaultsFile(t)
	configPath := filepath.Join(t.TempDir(), "graceful.toml")
	if err := os.WriteFile(configPath, []byte("shim_cgroup = \"/graceful-shim\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	other, err := anypb.New(&types.RuntimeInfo{Name: "other extension"})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: configPath})
	if err != nil {
		t.Fatal(err)
	}
	params := &bootapi.BootstrapParams{InstanceID: "id", Extensions: []*bootapi.Extension{{Value: ro}, {Value: other}}}
	inner := &recordingShim{}
	if _, err := newManager(inner).Start(context.Background(), params); err != nil {
		t.Fatal(err)
	}
	o := runcExtension(t, inner.params)
	if o == nil || o.ShimCgroup != "/graceful-shim" {
		t.Fatalf("the runc manager got runc options %+v, want shim_cgroup /graceful-shim", o)
	}
	var info types.RuntimeInfo
	if found, err := inner.params.FindExtension(&info); err != nil || !found || info.Name != "other extension" {
		t.Errorf("the other extension was not kept (found %v, %v)", found, err)
	}
	if found, _ := inner.params.FindExtension(&runtimeoptions.Options{}); found {
		t.Error("the runtimeoptions extension was passed on")
	}
	if len(params.Extensions) != 2 || !params.Extensions[0].GetValue().MessageIs(&runtimeoptions.Options{}) {
		t.Error("Start changed the caller's params")
	}
}

// Runc options pass through Start untouched; without options the defaults file's runc keys apply.
func TestManagerStartRuncOptionsAndDefaults(t *testing.T) {
	defaults := filepath.Join(t.TempDir(), "defaults.toml")
	if err := os.WriteFile(defaults, []byte("shim_cgroup = \"/from-defaults\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ConfigFileEnv, defaults)
	runc, err := typeurl.MarshalAnyToProto(&options.Options{ShimCgroup: "/from-runc"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		exts []*bootapi.Extension
		want string
	}{
		{"runc options", []*bootapi.Extension{{Value: runc}}, "/from-runc"},
		{"no options", nil, "/from-defaults"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := &recordingShim{}
			if _, err := newManager(inner).Start(context.Background(), &bootapi.BootstrapParams{Extensions: tc.exts}); err != nil {
				t.Fatal(err)
			}
			if o := runcExtension(t, inner.params); o == nil || o.ShimCgroup != tc.want {
				t.Errorf("the runc manager got runc options %+v, want shim_cgroup %s", o, tc.want)
			}
		})
	}
}
