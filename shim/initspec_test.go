package shim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
)

func TestWrapSpecPutsInitFirstAndKeepsTheRest(t *testing.T) {
	spec := `{"ociVersion":"1.2.0","process":{"terminal":true,"user":{"uid":65534,"gid":65534},
"args":["/app","--flag"],"env":["A=1"],"cwd":"/w","rlimits":[{"type":"RLIMIT_NOFILE","hard":18446744073709551615,"soft":1048576}]},
"root":{"path":"rootfs","readonly":true},"mounts":[{"destination":"/dev","type":"tmpfs","source":"tmpfs"}],"future":{"x":1}}`
	out, err := wrapSpec([]byte(spec), "/bundle/.graceful-init")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Process struct {
			Terminal bool                 `json:"terminal"`
			Args     []string             `json:"args"`
			Env      []string             `json:"env"`
			Cwd      string               `json:"cwd"`
			User     struct{ UID uint32 } `json:"user"`
			Rlimits  []struct {
				Hard uint64 `json:"hard"`
			} `json:"rlimits"`
		} `json:"process"`
		Mounts []struct {
			Destination, Type, Source string
			Options                   []string
		} `json:"mounts"`
		Future map[string]int `json:"future"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	p := got.Process
	if strings.Join(p.Args, " ") != InitMountPoint+" --shim -- /app --flag" {
		t.Errorf("args %q", p.Args)
	}
	if !p.Terminal || p.Cwd != "/w" || strings.Join(p.Env, " ") != "A=1" || p.User.UID != 65534 || p.Rlimits[0].Hard != 1<<64-1 || got.Future["x"] != 1 {
		t.Errorf("the rest of the spec changed: %s", out)
	}
	last := got.Mounts[len(got.Mounts)-1]
	if len(got.Mounts) != 2 || last.Destination != InitMountPoint || last.Source != "/bundle/.graceful-init" ||
		!strings.Contains(strings.Join(last.Options, ","), "ro") {
		t.Errorf("mounts %+v: want the init bind-mounted read-only after /dev", got.Mounts)
	}
	again, err := wrapSpec(out, "/bundle/.graceful-init")
	if err != nil || string(again) != string(out) {
		t.Errorf("wrapping twice changed the spec (%v)", err)
	}
}

func TestWrapSpecRefusesASpecWithoutArgs(t *testing.T) {
	for _, spec := range []string{`{"process":{"args":[]}}`, `{}`} {
		if _, err := wrapSpec([]byte(spec), "/x"); err == nil || !strings.Contains(err.Error(), "init:") {
			t.Errorf("%s: error %v", spec, err)
		}
	}
}

func TestWrapWithInitCopiesTheBinaryReadOnly(t *testing.T) {
	bundle := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"process":{"args":["/app"]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "graceful-init")
	if err := os.WriteFile(bin, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	copies := filepath.Join(t.TempDir(), "copies")
	if err := wrapWithInit(bundle, bin, copies); err != nil {
		t.Fatal(err)
	}
	found, _ := filepath.Glob(filepath.Join(copies, "graceful-init-*"))
	if len(found) != 1 {
		t.Fatalf("copies %v: want one", found)
	}
	fi, err := os.Stat(found[0])
	if err != nil || fi.Mode().Perm() != 0o555 {
		t.Fatalf("copy %v (%v): want mode 0555", fi, err)
	}
	spec, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	if !strings.Contains(string(spec), found[0]) {
		t.Fatalf("spec %s does not mount the copy %s", spec, found[0])
	}
	// A copy that changed (a privileged container remounted and wrote it) is replaced.
	os.Chmod(found[0], 0o755)
	os.WriteFile(found[0], []byte("tampered"), 0o755)
	if err := wrapWithInit(bundle, bin, copies); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(found[0]); string(data) != "binary" {
		t.Fatalf("the tampered copy was used: %q", data)
	}
	if err := wrapWithInit(t.TempDir(), filepath.Join(t.TempDir(), "missing"), copies); err == nil || !strings.Contains(err.Error(), "init_path") {
		t.Fatalf("missing binary: %v", err)
	}
}

func TestInitKeys(t *testing.T) {
	p, err := ApplyAnnotations(DefaultPolicy(), map[string]string{AnnotationInit: "True"})
	if err != nil || !p.Init {
		t.Fatalf("annotation: %v %v", p.Init, err)
	}
	if _, err := ApplyAnnotations(DefaultPolicy(), map[string]string{AnnotationInit: "yes"}); err == nil ||
		!strings.Contains(err.Error(), AnnotationInit) || !strings.Contains(err.Error(), "true or false") {
		t.Fatalf("bad annotation: %v", err)
	}
	cfg, err := ParseConfigFile([]byte("init = true\ninit_path = \"/opt/graceful-init\""), "f.toml")
	if err != nil || !cfg.Policy.Init || cfg.Policy.InitPath != "/opt/graceful-init" {
		t.Fatalf("file: %+v %v", cfg, err)
	}
	for _, bad := range []string{`init = "true"`, `init_path = "relative/init"`} {
		if _, err := ParseConfigFile([]byte(bad), "f.toml"); err == nil || !strings.Contains(err.Error(), strings.Fields(bad)[0]) {
			t.Errorf("%s: error %v", bad, err)
		}
	}
}

// An init handler (init = true in its options) never wraps the pod's sandbox (pause) container.
func TestResolveNeverGivesASandboxTheInit(t *testing.T) {
	t.Setenv(ConfigFileEnv, filepath.Join(t.TempDir(), "missing.toml"))
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("init = true\n")})
	if err != nil {
		t.Fatal(err)
	}
	sandbox, err := Resolve(opts, bundleWith(t, `"io.kubernetes.cri.container-type":"sandbox"`))
	if err != nil || sandbox.Policy.Init || !sandbox.Policy.Passthrough {
		t.Fatalf("sandbox: init %v passthrough %v (%v): want no init", sandbox.Policy.Init, sandbox.Policy.Passthrough, err)
	}
	app, err := Resolve(opts, bundleWith(t, `"io.kubernetes.cri.container-type":"container"`))
	if err != nil || !app.Policy.Init {
		t.Fatalf("container: init %v (%v): want the init", app.Policy.Init, err)
	}
}
