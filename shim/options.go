package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// Settings is what Create resolves for one container: its stop policy and the options handed to
// the runc task code.
type Settings struct {
	Policy Policy
	// RuncOptions replaces the request's options: always a runc options message, or nil.
	RuncOptions *anypb.Any
	// Workload is the container's pod and name when CRI created it, for its stop reports.
	Workload *Workload
}

// Workload names a Kubernetes container: its pod's namespace, name and UID, and its own name.
type Workload struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"pod_uid,omitempty"`
	Container string `json:"container"`
}

// CRI's annotations on a container's spec that name its pod and itself.
const (
	podNamespaceAnnotation  = "io.kubernetes.cri.sandbox-namespace"
	podNameAnnotation       = "io.kubernetes.cri.sandbox-name"
	podUIDAnnotation        = "io.kubernetes.cri.sandbox-uid"
	containerNameAnnotation = "io.kubernetes.cri.container-name"
)

// workloadOf returns the pod and container that CRI's annotations name, nil when they name none.
func workloadOf(annotations map[string]string) *Workload {
	w := Workload{Namespace: annotations[podNamespaceAnnotation], Pod: annotations[podNameAnnotation],
		PodUID: annotations[podUIDAnnotation], Container: annotations[containerNameAnnotation]}
	if w.Pod == "" || w.Container == "" {
		return nil
	}
	return &w
}

// sandboxAnnotation marks a CRI sandbox (pause) container, whose Kills are forwarded untouched.
const sandboxAnnotation = "io.kubernetes.cri.container-type"

// Resolve works out a container's settings from the runtime options containerd sent and the
// annotations in its bundle, in this precedence: annotation > options file > built-in default.
// The options file is the inline ConfigBody or the ConfigPath of runtimeoptions.v1.Options (sent
// by CRI for runtime types other than io.containerd.runc.v2), else the host defaults file.
// Runc options (containerd.runc.v1.Options) pass through unchanged.
func Resolve(opts *anypb.Any, bundle string) (*Settings, error) {
	file, runcOpts, err := optionsFile(opts)
	if err != nil {
		return nil, err
	}
	s := &Settings{Policy: file.Policy}
	if s.RuncOptions, err = runcOptionsOf(file, runcOpts); err != nil {
		return nil, err
	}
	annotations, err := readAnnotations(bundle)
	if err != nil {
		return nil, err
	}
	if annotations[sandboxAnnotation] == "sandbox" {
		s.Policy.Passthrough = true
	}
	if s.Policy, err = ApplyAnnotations(s.Policy, annotations); err != nil {
		return nil, err
	}
	if s.Policy.Passthrough {
		// A sandbox (pause) container is left as it is: it is the PID 1 that a pod's shared PID
		// namespace needs, and an init handler's options apply to the pod's containers only.
		s.Policy.Init = false
	}
	if v, ok := annotations[KubernetesGraceAnnotation]; ok {
		s.Policy.StopBudget = KubernetesBudget(v)
	}
	s.Workload = workloadOf(annotations)
	return s, nil
}

// RuncOptions returns the runc options Create hands the runc task code for the runtime options
// opts (see Resolve): runc options unchanged, else the runc keys of the options file that applies
// (nil when it has none). The shim manager's Info and Start use it too.
func RuncOptions(opts *anypb.Any) (*anypb.Any, error) {
	file, runcOpts, err := optionsFile(opts)
	if err != nil {
		return nil, err
	}
	return runcOptionsOf(file, runcOpts)
}

// runcOptionsOf returns runcOpts when containerd sent runc options, else the file's runc keys.
func runcOptionsOf(file *FileConfig, runcOpts *anypb.Any) (*anypb.Any, error) {
	if runcOpts != nil || file.Runc == nil {
		return runcOpts, nil
	}
	a, err := typeurl.MarshalAnyToProto(file.Runc)
	if err != nil {
		return nil, fmt.Errorf("marshal runc options: %w", err)
	}
	return a, nil
}

// optionsFile returns the options file that applies, and the runc options to pass through when
// containerd sent runc options itself.
func optionsFile(opts *anypb.Any) (*FileConfig, *anypb.Any, error) {
	if opts == nil || opts.GetTypeUrl() == "" {
		cfg, err := ReadDefaultsFile()
		return cfg, nil, err
	}
	v, err := typeurl.UnmarshalAny(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("runtime options of type %q cannot be decoded: accepted containerd.runc.v1.Options and runtimeoptions.v1.Options: %w", opts.GetTypeUrl(), err)
	}
	switch o := v.(type) {
	case *options.Options:
		cfg, err := ReadDefaultsFile()
		return cfg, opts, err
	case *runtimeoptions.Options:
		switch {
		case len(o.ConfigBody) > 0:
			cfg, err := ParseConfigFile(o.ConfigBody, "runtime options ConfigBody")
			return cfg, nil, err
		case o.ConfigPath != "":
			cfg, err := ReadConfigFile(o.ConfigPath)
			return cfg, nil, err
		default:
			cfg, err := ReadDefaultsFile()
			return cfg, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("runtime options of type %q are not supported: accepted containerd.runc.v1.Options and runtimeoptions.v1.Options", opts.GetTypeUrl())
	}
}

func readAnnotations(bundle string) (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read bundle spec: %w", err)
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("parse bundle spec: %w", err)
	}
	return spec.Annotations, nil
}
