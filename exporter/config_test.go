package exporter

import (
	"errors"
	"flag"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// testEnvironment has NODE_NAME unset, host name "host-a", and only the file "/kubeconfig".
var testEnvironment = environment{
	getenv:   func(string) string { return "" },
	hostname: func() (string, error) { return "host-a", nil },
	stat: func(name string) (os.FileInfo, error) {
		if name == "/kubeconfig" {
			return nil, nil
		}
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	},
}

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, testEnvironment)
	if err != nil {
		t.Fatal(err)
	}
	want := config{address: DefaultAddress, listen: DefaultListen, nodeName: "host-a",
		eventInterval: 5 * time.Minute, eventCommands: 3, forgetAfter: time.Hour, logLevel: slog.LevelInfo}
	if *c != want {
		t.Errorf("defaults: got %+v, want %+v", *c, want)
	}
}

func TestConfigValues(t *testing.T) {
	env := testEnvironment
	env.getenv = func(k string) string {
		if k == "NODE_NAME" {
			return "node-7"
		}
		return ""
	}
	c, err := parseConfig([]string{"--address=/tmp/c.sock", "--listen", "127.0.0.1:0", "--kubernetes-events",
		"--kubeconfig=/kubeconfig", "--event-interval=30s", "--event-commands=0", "--forget-after=10m",
		"--log-level=DEBUG"}, env)
	if err != nil {
		t.Fatal(err)
	}
	want := config{address: "/tmp/c.sock", listen: "127.0.0.1:0", kubernetesEvents: true, kubeconfig: "/kubeconfig",
		nodeName: "node-7", eventInterval: 30 * time.Second, eventCommands: 0, forgetAfter: 10 * time.Minute,
		logLevel: slog.LevelDebug}
	if *c != want {
		t.Errorf("got %+v, want %+v", *c, want)
	}
	if c, err := parseConfig([]string{"--node-name=n1"}, env); err != nil || c.nodeName != "n1" {
		t.Errorf("--node-name=n1: got %+v, %v", c, err)
	}
}

func TestConfigHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		if _, err := parseConfig([]string{arg}, testEnvironment); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%s: got %v, want flag.ErrHelp", arg, err)
		}
	}
}

// Each bad flag is an error that names the flag and what it accepts.
func TestConfigErrors(t *testing.T) {
	noHost := testEnvironment
	noHost.hostname = func() (string, error) { return "", errors.New("no host name") }
	for _, tc := range []struct {
		args []string
		env  environment
		want []string // substrings of the error
	}{
		{[]string{"--address="}, testEnvironment, []string{"--address"}},
		{[]string{"--listen=9741"}, testEnvironment, []string{"--listen", "HOST:PORT"}},
		{[]string{"--listen=:70000"}, testEnvironment, []string{"--listen", "0 to 65535"}},
		{[]string{"--listen=:-1"}, testEnvironment, []string{"--listen", "0 to 65535"}},
		{[]string{"--listen=:http"}, testEnvironment, []string{"--listen", "0 to 65535"}},
		{[]string{"--event-interval=0s"}, testEnvironment, []string{"-event-interval", "duration > 0"}},
		{[]string{"--event-interval=-1m"}, testEnvironment, []string{"-event-interval", "duration > 0"}},
		{[]string{"--event-interval=soon"}, testEnvironment, []string{"-event-interval", "duration > 0"}},
		{[]string{"--event-commands=21"}, testEnvironment, []string{"-event-commands", "0 to 20"}},
		{[]string{"--event-commands=-1"}, testEnvironment, []string{"-event-commands", "0 to 20"}},
		{[]string{"--event-commands=three"}, testEnvironment, []string{"-event-commands", "0 to 20"}},
		{[]string{"--forget-after=0"}, testEnvironment, []string{"-forget-after", "duration > 0"}},
		{[]string{"--log-level=verbose"}, testEnvironment, []string{"-log-level", "debug, info, warn, error"}},
		{[]string{"--kubeconfig=/kubeconfig"}, testEnvironment, []string{"--kubeconfig", "--kubernetes-events"}},
		{[]string{"--kubernetes-events", "--kubeconfig=/missing"}, testEnvironment, []string{"--kubeconfig", "/missing"}},
		{[]string{"--kubernetes-events"}, noHost, []string{"--node-name", "NODE_NAME"}},
		{[]string{"--kubernetes-events=maybe"}, testEnvironment, []string{"-kubernetes-events"}},
		{[]string{"--no-such-flag"}, testEnvironment, []string{"-no-such-flag"}},
		{[]string{"extra"}, testEnvironment, []string{`"extra"`}},
	} {
		_, err := parseConfig(tc.args, tc.env)
		if err == nil {
			t.Errorf("%q: no error", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not say %q", tc.args, err, w)
			}
		}
	}
}

func TestMainExitCodes(t *testing.T) {
	if code := Main([]string{"--event-commands=99"}); code != 2 {
		t.Errorf("bad flag: exit code %d, want 2", code)
	}
	if code := Main([]string{"--help"}); code != 0 {
		t.Errorf("--help: exit code %d, want 0", code)
	}
}
