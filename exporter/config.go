package exporter

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults of the command-line flags.
const (
	DefaultAddress       = "/run/containerd/containerd.sock"
	DefaultListen        = ":9741"
	DefaultEventInterval = 5 * time.Minute
	DefaultEventCommands = 3
	DefaultForgetAfter   = time.Hour

	maxEventCommands = 20
)

// config is what the command line asks for, validated.
type config struct {
	address          string
	listen           string
	kubernetesEvents bool
	kubeconfig       string
	nodeName         string
	eventInterval    time.Duration
	eventCommands    int
	forgetAfter      time.Duration
	logLevel         slog.Level
}

// environment is what parseConfig reads from outside the command line (swapped in tests).
type environment struct {
	getenv   func(string) string
	hostname func() (string, error)
	stat     func(string) (os.FileInfo, error)
}

var osEnvironment = environment{getenv: os.Getenv, hostname: os.Hostname, stat: os.Stat}

// logLevel is the --log-level flag.
type logLevel struct{ level *slog.Level }

var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo,
	"warn": slog.LevelWarn, "error": slog.LevelError}

func (l logLevel) String() string {
	if l.level == nil {
		return "info"
	}
	return strings.ToLower(l.level.String())
}

func (l logLevel) Set(s string) error {
	v, ok := logLevels[strings.ToLower(s)]
	if !ok {
		return errors.New("want one of debug, info, warn, error")
	}
	*l.level = v
	return nil
}

// positiveDuration is a duration flag that must be > 0.
type positiveDuration struct{ d *time.Duration }

func (v positiveDuration) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v positiveDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return errors.New("want a duration > 0, such as 30s, 5m or 1h")
	}
	*v.d = d
	return nil
}

// boundedInt is an integer flag from min to max.
type boundedInt struct {
	n        *int
	min, max int
}

func (v boundedInt) String() string {
	if v.n == nil {
		return ""
	}
	return strconv.Itoa(*v.n)
}

func (v boundedInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < v.min || n > v.max {
		return fmt.Errorf("want a whole number from %d to %d", v.min, v.max)
	}
	*v.n = n
	return nil
}

// newFlagSet declares the flags into c, whose fields get their defaults.
func newFlagSet(c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("graceful-exporter", flag.ContinueOnError)
	fs.StringVar(&c.address, "address", DefaultAddress, "containerd's socket")
	fs.StringVar(&c.listen, "listen", DefaultListen, "`HOST:PORT` to serve /metrics and /healthz on")
	fs.BoolVar(&c.kubernetesEvents, "kubernetes-events", false,
		"post a Kubernetes Event on a pod whose stop SIGKILLed processes")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "",
		"kubeconfig `file` for --kubernetes-events (default: the in-cluster config)")
	fs.StringVar(&c.nodeName, "node-name", "",
		"this node's name, the Events' reporting instance (default: $NODE_NAME, else the host name)")
	c.eventInterval, c.eventCommands, c.forgetAfter = DefaultEventInterval, DefaultEventCommands, DefaultForgetAfter
	fs.Var(positiveDuration{&c.eventInterval}, "event-interval", "at most one Event per pod per `interval`")
	fs.Var(boundedInt{&c.eventCommands, 0, maxEventCommands}, "event-commands",
		"name at most `N` commands of SIGKILLed processes in an Event (0-20)")
	fs.Var(positiveDuration{&c.forgetAfter}, "forget-after",
		"delete a pod's series not updated for this `duration`")
	c.logLevel = slog.LevelInfo
	fs.Var(logLevel{&c.logLevel}, "log-level", "log `level`: debug, info, warn or error (default info)")
	return fs
}

// usage writes the command's usage and its flags to w.
func usage(w io.Writer) {
	var c config
	fs := newFlagSet(&c)
	fs.SetOutput(w)
	fmt.Fprintln(w, "Usage: graceful-exporter [flags]")
	fmt.Fprintln(w, "Exports the graceful shim's stop reports as Prometheus metrics and Kubernetes Events.")
	fmt.Fprintln(w)
	fs.PrintDefaults()
}

// parseConfig parses and validates the command line. It returns flag.ErrHelp for -h/--help, and
// otherwise an error that names the flag at fault and what it accepts.
func parseConfig(args []string, env environment) (*config, error) {
	var c config
	fs := newFlagSet(&c)
	fs.SetOutput(io.Discard) // Main prints the error and the usage
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: graceful-exporter takes flags only", fs.Arg(0))
	}
	if c.address == "" {
		return nil, errors.New("--address: want the path of containerd's socket, got none")
	}
	if err := validateListen(c.listen); err != nil {
		return nil, err
	}
	if c.kubeconfig != "" {
		if !c.kubernetesEvents {
			return nil, fmt.Errorf("--kubeconfig=%s: only used with --kubernetes-events, which is not set", c.kubeconfig)
		}
		if _, err := env.stat(c.kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig: want a readable kubeconfig file: %w", err)
		}
	}
	if c.nodeName == "" {
		c.nodeName = env.getenv("NODE_NAME")
	}
	if c.nodeName == "" {
		h, err := env.hostname()
		if err != nil && c.kubernetesEvents {
			return nil, fmt.Errorf("--node-name: not given, $NODE_NAME is empty, and the host name is unknown: %w", err)
		}
		c.nodeName = h
	}
	if c.nodeName == "" && c.kubernetesEvents {
		return nil, errors.New("--node-name: not given, and neither $NODE_NAME nor the host name names this node")
	}
	return &c, nil
}

// validateListen checks a --listen address: HOST:PORT with a numeric port from 0 to 65535.
func validateListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen=%s: want HOST:PORT (such as :9741 or 127.0.0.1:9741): %w", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("--listen=%s: want a port number from 0 to 65535, got %q", addr, port)
	}
	return nil
}
