package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// Annotation keys a container may carry to set its stop policy. They take precedence over the
// runtime options file and the host defaults file.
const (
	AnnotationPrefix      = "io.containerd.graceful.v2."
	AnnotationGracePeriod = AnnotationPrefix + "grace-period"
	AnnotationStopSignals = AnnotationPrefix + "stop-signals"
	AnnotationDrainSignal = AnnotationPrefix + "drain-signal"
	AnnotationStopOrder   = AnnotationPrefix + "stop-order"
	AnnotationInit        = AnnotationPrefix + "init"
)

// StopOrder is who gets the stop signal first.
type StopOrder string

const (
	// InitFirst: init gets the stop signal; when it exits while other processes remain, its exit
	// is held while they drain.
	InitFirst StopOrder = "init-first"
	// ChildrenFirst: every other process is drained, then init gets the stop signal.
	ChildrenFirst StopOrder = "children-first"
	// Auto: InitFirst when init handles the stop signal, else ChildrenFirst.
	Auto StopOrder = "auto"
)

func parseStopOrder(s string) (StopOrder, error) {
	switch o := StopOrder(strings.ToLower(strings.TrimSpace(s))); o {
	case InitFirst, ChildrenFirst, Auto:
		return o, nil
	}
	return "", fmt.Errorf("unknown stop order %q: accepted auto, init-first, children-first", s)
}

// DefaultConfigFile is the host defaults file, read when containerd passes no runtime options
// file. GRACEFUL_CONFIG_FILE in the shim's environment (inherited from containerd) overrides it.
const DefaultConfigFile = "/etc/containerd/graceful.toml"

// ConfigFileEnv names the environment variable that overrides DefaultConfigFile.
const ConfigFileEnv = "GRACEFUL_CONFIG_FILE"

// MaxGracePeriod bounds grace_period and the grace-period annotation.
const MaxGracePeriod = time.Hour

// Policy is how a container is stopped.
type Policy struct {
	// GracePeriod is how long the container's other processes have after the drain signal.
	GracePeriod time.Duration
	// StopSignals are the signals that, sent to init, start a graceful stop.
	StopSignals []unix.Signal
	// StopSignalsSet: StopSignals comes from an options file or an annotation, and wins over the
	// stop signal a client recorded for the container (see WithRecordedStopSignal).
	StopSignalsSet bool
	// DrainSignal is sent to every process of the container other than init.
	DrainSignal unix.Signal
	// DrainSignalSet: DrainSignal comes from an options file or an annotation, and goes to every
	// process; else a stop signal other than it goes to the processes that handle that (see
	// DrainStopSignal).
	DrainSignalSet bool
	// StopOrder says whether init or the other processes get the stop first.
	StopOrder StopOrder
	// StopBudget, when not 0, is how long a whole stop may take before kubelet SIGKILLs the
	// container: the drain is cut short so that it ends within it (see KubernetesBudget).
	StopBudget time.Duration
	// Passthrough forwards every Kill untouched (sandbox containers).
	Passthrough bool
	// Init runs graceful-init as the container's PID 1, with the image's process as its child
	// (opt-in; see initspec.go).
	Init bool
	// InitPath is the graceful-init binary; "" for the one next to the shim's own binary.
	InitPath string
}

// DefaultPolicy is the built-in policy.
func DefaultPolicy() Policy {
	return Policy{
		GracePeriod: 10 * time.Second,
		StopSignals: []unix.Signal{unix.SIGTERM},
		DrainSignal: unix.SIGTERM,
		StopOrder:   Auto,
	}
}

// WithRecordedStopSignal adds sig, the stop signal that a client recorded for the container (an
// image's STOPSIGNAL, a pod's lifecycle.stopSignal), to the stop signals, unless they were set
// explicitly. changed says whether it was added.
func (p Policy) WithRecordedStopSignal(sig unix.Signal) (_ Policy, changed bool) {
	if p.StopSignalsSet || sig == 0 || sig == unix.SIGKILL || sig == unix.SIGSTOP || p.IsStopSignal(sig) {
		return p, false
	}
	p.StopSignals = append(slices.Clone(p.StopSignals), sig)
	return p, true
}

// DrainStopSignal is what a drain for a stop on sig gives the processes that handle sig instead of
// the drain signal: sig itself, when it is not the drain signal and no drain signal was set
// explicitly (nginx behind an entrypoint script, stopped with its image's SIGQUIT, quits
// gracefully on SIGQUIT only); 0 when every process gets the drain signal.
func (p Policy) DrainStopSignal(sig unix.Signal) unix.Signal {
	if p.DrainSignalSet || sig == 0 || sig == p.DrainSignal || sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return 0
	}
	return sig
}

// IsStopSignal reports whether sig starts a graceful stop.
func (p Policy) IsStopSignal(sig unix.Signal) bool {
	return slices.Contains(p.StopSignals, sig)
}

// String describes the policy for logs.
func (p Policy) String() string {
	names := make([]string, len(p.StopSignals))
	for i, s := range p.StopSignals {
		names[i] = process.SignalName(s)
	}
	return fmt.Sprintf("grace-period=%s stop-signals=%s drain-signal=%s stop-order=%s init=%t", p.GracePeriod,
		strings.Join(names, ","), process.SignalName(p.DrainSignal), p.StopOrder, p.Init)
}

// FileConfig is a parsed runtime options file: the graceful keys and the runc options.
type FileConfig struct {
	// Policy holds the graceful keys applied on top of the built-in defaults.
	Policy Policy
	// Runc holds the runc keys, passed to the runc task code.
	Runc *options.Options
}

// runcKeys maps every accepted runc key, in snake_case and in containerd's CamelCase, to a setter.
var runcKeys = map[string]func(o *options.Options, v any) error{
	"binary_name":     setString(func(o *options.Options) *string { return &o.BinaryName }),
	"root":            setString(func(o *options.Options) *string { return &o.Root }),
	"shim_cgroup":     setString(func(o *options.Options) *string { return &o.ShimCgroup }),
	"criu_image_path": setString(func(o *options.Options) *string { return &o.CriuImagePath }),
	"criu_work_path":  setString(func(o *options.Options) *string { return &o.CriuWorkPath }),
	"systemd_cgroup":  setBool(func(o *options.Options) *bool { return &o.SystemdCgroup }),
	"no_pivot_root":   setBool(func(o *options.Options) *bool { return &o.NoPivotRoot }),
	"no_new_keyring":  setBool(func(o *options.Options) *bool { return &o.NoNewKeyring }),
	"io_uid":          setUint32(func(o *options.Options) *uint32 { return &o.IoUid }),
	"io_gid":          setUint32(func(o *options.Options) *uint32 { return &o.IoGid }),
}

var camelRuncKeys = map[string]string{
	"BinaryName": "binary_name", "Root": "root", "ShimCgroup": "shim_cgroup",
	"CriuImagePath": "criu_image_path", "CriuWorkPath": "criu_work_path",
	"SystemdCgroup": "systemd_cgroup", "NoPivotRoot": "no_pivot_root",
	"NoNewKeyring": "no_new_keyring", "IoUid": "io_uid", "IoGid": "io_gid",
}

func acceptedKeys() string {
	keys := []string{"grace_period", "stop_signals", "drain_signal", "stop_order", "init", "init_path"}
	n := len(keys)
	for k := range runcKeys {
		keys = append(keys, k)
	}
	sort.Strings(keys[n:])
	return strings.Join(keys, ", ")
}

// ParseConfigFile parses a runtime options file (TOML). source names it in errors.
func ParseConfigFile(data []byte, source string) (*FileConfig, error) {
	var raw map[string]any
	if err := toml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: not valid TOML: %w", source, err)
	}
	cfg := &FileConfig{Policy: DefaultPolicy()}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		value := raw[key]
		var err error
		switch key {
		case "grace_period":
			s, ok := value.(string)
			if !ok {
				err = fmt.Errorf("want a quoted Go duration such as \"10s\", got %v", value)
				break
			}
			cfg.Policy.GracePeriod, err = parseGracePeriod(s)
		case "stop_signals":
			cfg.Policy.StopSignals, err = parseSignalList(value)
			cfg.Policy.StopSignalsSet = true
		case "drain_signal":
			s, ok := value.(string)
			if !ok {
				err = fmt.Errorf("want a signal name such as \"SIGTERM\", got %v", value)
				break
			}
			cfg.Policy.DrainSignal, err = parseDrainSignal(s)
			cfg.Policy.DrainSignalSet = true
		case "stop_order":
			s, ok := value.(string)
			if !ok {
				err = fmt.Errorf("want one of \"auto\", \"init-first\", \"children-first\", got %v", value)
				break
			}
			cfg.Policy.StopOrder, err = parseStopOrder(s)
		case "init":
			b, ok := value.(bool)
			if !ok {
				err = fmt.Errorf("want true or false, got %v", value)
				break
			}
			cfg.Policy.Init = b
		case "init_path":
			s, ok := value.(string)
			if !ok || !filepath.IsAbs(s) {
				err = fmt.Errorf("want the absolute path of the graceful-init binary, got %v", value)
				break
			}
			cfg.Policy.InitPath = s
		default:
			name := key
			if snake, ok := camelRuncKeys[key]; ok {
				name = snake
			}
			set, ok := runcKeys[name]
			if !ok {
				return nil, fmt.Errorf("%s: unknown key %q: accepted keys are %s", source, key, acceptedKeys())
			}
			if cfg.Runc == nil {
				cfg.Runc = &options.Options{}
			}
			err = set(cfg.Runc, value)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: key %q: %w", source, key, err)
		}
	}
	return cfg, nil
}

// ReadConfigFile reads and parses the options file at path.
func ReadConfigFile(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read runtime options file: %w", err)
	}
	return ParseConfigFile(data, path)
}

// ReadDefaultsFile reads the host defaults file (DefaultConfigFile, or the file named by
// GRACEFUL_CONFIG_FILE). A missing file yields the built-in defaults.
func ReadDefaultsFile() (*FileConfig, error) {
	path := DefaultConfigFile
	if p := os.Getenv(ConfigFileEnv); p != "" {
		path = p
	}
	cfg, err := ReadConfigFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &FileConfig{Policy: DefaultPolicy()}, nil
	}
	return cfg, err
}

// ApplyAnnotations overrides p with the graceful annotations found in annotations. Errors name the
// annotation and the accepted form.
func ApplyAnnotations(p Policy, annotations map[string]string) (Policy, error) {
	keys := make([]string, 0)
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		value := annotations[key]
		var err error
		switch key {
		case AnnotationGracePeriod:
			p.GracePeriod, err = parseGracePeriod(value)
		case AnnotationStopSignals:
			p.StopSignals, err = parseSignalList(value)
			p.StopSignalsSet = true
		case AnnotationDrainSignal:
			p.DrainSignal, err = parseDrainSignal(value)
			p.DrainSignalSet = true
		case AnnotationStopOrder:
			p.StopOrder, err = parseStopOrder(value)
		case AnnotationInit:
			p.Init, err = parseBool(value)
		default:
			return p, fmt.Errorf("annotation %q: unknown graceful annotation: accepted %s, %s, %s, %s, %s",
				key, AnnotationGracePeriod, AnnotationStopSignals, AnnotationDrainSignal, AnnotationStopOrder, AnnotationInit)
		}
		if err != nil {
			return p, fmt.Errorf("annotation %q: %w", key, err)
		}
	}
	return p, nil
}

// KubernetesGraceAnnotation is the container annotation in which kubelet passes the pod's
// termination grace period in seconds (allowlist it with the runtime's container_annotations).
const KubernetesGraceAnnotation = "io.kubernetes.pod.terminationGracePeriod"

// maxKubernetesGraceSeconds caps a termination grace period (about 136 years, far above any
// grace period and far below an overflowing Duration).
const maxKubernetesGraceSeconds = 1 << 32

// KubernetesBudget returns the stop budget for a termination grace period: the period less a
// margin of 10% (at least 1s, at most 5s) left for init's own exit and containerd's bookkeeping
// before kubelet's SIGKILL. It returns 0 for a value that is not a whole number of seconds.
func KubernetesBudget(value string) time.Duration {
	secs, err := strconv.Atoi(strings.TrimSpace(value))
	if err != nil || secs <= 0 {
		return 0
	}
	// A pod author sets this value: cap it before it can overflow a Duration.
	period := time.Duration(min(secs, maxKubernetesGraceSeconds)) * time.Second
	margin := min(max(period/10, time.Second), 5*time.Second)
	return max(period-margin, 0)
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%q: want true or false", s)
}

func parseGracePeriod(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a Go duration: want a value such as \"10s\" or \"1m30s\" between 0s and %s", s, MaxGracePeriod)
	}
	if d < 0 || d > MaxGracePeriod {
		return 0, fmt.Errorf("%s is out of range: want a duration between 0s and %s", d, MaxGracePeriod)
	}
	return d, nil
}

func parseDrainSignal(s string) (unix.Signal, error) {
	sig, err := process.ParseSignal(s)
	if err != nil {
		return 0, err
	}
	if sig == unix.SIGSTOP || sig == unix.SIGKILL {
		return 0, fmt.Errorf("%s cannot be a drain signal: it gives no process a chance to clean up", process.SignalName(sig))
	}
	return sig, nil
}

// parseSignalList accepts a comma-separated string or a TOML array of strings.
func parseSignalList(value any) ([]unix.Signal, error) {
	var items []string
	switch v := value.(type) {
	case string:
		items = strings.Split(v, ",")
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("want signal names such as [\"SIGTERM\", \"SIGINT\"], got %v", e)
			}
			items = append(items, s)
		}
	default:
		return nil, fmt.Errorf("want a list of signal names such as \"SIGTERM,SIGINT\", got %v", value)
	}
	var sigs []unix.Signal
	for _, item := range items {
		if strings.TrimSpace(item) == "" {
			continue
		}
		sig, err := process.ParseSignal(item)
		if err != nil {
			return nil, err
		}
		if sig == unix.SIGKILL || sig == unix.SIGSTOP {
			return nil, fmt.Errorf("%s cannot be a stop signal: it is always forwarded at once", process.SignalName(sig))
		}
		if !slices.Contains(sigs, sig) {
			sigs = append(sigs, sig)
		}
	}
	if len(sigs) == 0 {
		return nil, errors.New("empty list: want at least one signal name such as SIGTERM")
	}
	return sigs, nil
}

// setAs returns a setter for a field of type T; want describes the accepted TOML form.
func setAs[T any](field func(*options.Options) *T, want string) func(*options.Options, any) error {
	return func(o *options.Options, v any) error {
		t, ok := v.(T)
		if !ok {
			return fmt.Errorf("want %s, got %v", want, v)
		}
		*field(o) = t
		return nil
	}
}

func setString(field func(*options.Options) *string) func(*options.Options, any) error {
	return setAs(field, "a quoted string")
}

func setBool(field func(*options.Options) *bool) func(*options.Options, any) error {
	return setAs(field, "true or false")
}

func setUint32(field func(*options.Options) *uint32) func(*options.Options, any) error {
	return func(o *options.Options, v any) error {
		n, ok := v.(int64)
		if !ok || n < 0 || n > 1<<32-1 {
			return fmt.Errorf("want a whole number from 0 to 4294967295, got %v", v)
		}
		*field(o) = uint32(n)
		return nil
	}
}
