package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// TestExporter runs graceful-exporter the way contrib/exporter/graceful-exporter.service starts
// it (binary, socket and port rewritten) against the stack's containerd, and Prometheus (Debian's
// 2.42) scraping it with contrib/exporter/alerts.yaml. A stop whose processes all exit on TERM
// counts as clean and fires no alert; one whose child ignores TERM counts a SIGKILLed process and
// fires GracefulStopKilledProcesses. containerd is then SIGKILLed and restarted under the
// exporter: it reconnects, counts the gap, and the next stop's report is counted. Bad flags are
// refused, naming the flag; SIGTERM ends the exporter with status 0.
func TestExporter(t *testing.T) {
	promBin := stack.Tool(t, "prometheus", "debian", "install-prometheus.sh")
	dir := t.TempDir()
	bin, err := stack.BuildExporter(dir)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("bad-flags", func(t *testing.T) {
		for _, tc := range []struct{ args, names string }{
			{"--listen=nowhere", "listen"},
			{"--event-interval=0s", "event-interval"},
			{"--event-commands=-1", "event-commands"},
			{"--forget-after=-1h", "forget-after"},
			{"--kubeconfig=" + filepath.Join(dir, "kubeconfig"), "kubeconfig"},
			{"--log-level=loud", "log-level"},
			{"--no-such-flag", "no-such-flag"},
			{"surplus", "surplus"},
		} {
			// The flag package names a flag with one dash ("flag -listen"); either form will do.
			cmd := exec.Command(bin, strings.Fields(tc.args)...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), tc.names) {
				t.Errorf("graceful-exporter %s: %v, output %q; want exit status 2 and an error naming %s", tc.args, err, out, tc.names)
			}
		}
	})

	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := unitExecStart(t, filepath.Join(stack.ModuleRoot(), "contrib", "exporter", "graceful-exporter.service"),
		map[string]string{"--address": theStack.Address, "--listen": listen})
	cmd := exec.Command(bin, append(args, "--log-level=debug")...)
	exporter, err := stack.StartDaemon("graceful-exporter", filepath.Join(dir, "exporter.log"), cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if exited, _ := exporter.Exited(0); !exited {
			exporter.Stop(t, 10*time.Second)
		}
		if t.Failed() {
			t.Logf("exporter log:\n%s", exporter.Log(20000))
		}
	})
	metricsURL := "http://" + listen + "/metrics"
	waitExporterConnected(t, exporter, metricsURL, 0)

	prom := startPrometheus(t, promBin, listen)
	ns := map[string]string{"containerd_namespace": stack.Namespace, "namespace": "", "pod": "", "container": ""}
	with := func(pairs ...string) map[string]string { return withLabels(ns, pairs...) }

	// A stop whose processes all exit on TERM.
	reports := subscribeReports(t)
	clean := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: seedScript})
	waitTrapped(t, clean, "child")
	stopExpect(t, clean, 20*time.Second, exitOK)
	r := reports.NextReport(t, clean.ID)
	if r.Drain == nil || r.Drain.Totals["exited"] == 0 {
		t.Fatalf("the clean stop's report: %+v, want processes that exited on TERM", r.Drain)
	}
	waitMetric(t, metricsURL, "graceful_stops_total", with("order", r.Order, "result", "clean"), 1)
	m := waitMetric(t, metricsURL, "graceful_stop_processes_total", with("outcome", "exited"), float64(r.Drain.Totals["exited"]))
	if v, found := m.Value("graceful_stop_processes_total", with("outcome", "killed")); found {
		t.Errorf("a clean stop counted %v killed processes", v)
	}
	if v, _ := m.Value("graceful_stop_drain_duration_seconds", map[string]string{"containerd_namespace": stack.Namespace}); v != 1 {
		t.Errorf("drain durations observed: %v, want 1", v)
	}
	prom.waitIngested(t, `graceful_stops_total{result="clean"}`, 1)
	if alerts := prom.firingAfterNextEvaluation(t); len(alerts) != 0 {
		t.Fatalf("alerts after a clean stop: %v, want none", alerts)
	}

	// A stop that SIGKILLs a TERM-ignoring child at the end of a 1 s grace.
	nKilled := stopKillingAChild(t)
	waitMetric(t, metricsURL, "graceful_stops_total", with("result", "killed"), 1)
	waitMetric(t, metricsURL, "graceful_stop_processes_total", with("outcome", "killed"), float64(nKilled))
	alert := prom.waitFiring(t, "GracefulStopKilledProcesses")
	if alert["containerd_namespace"] != stack.Namespace || alert["severity"] != "warning" {
		t.Errorf("the alert's labels %v, want containerd_namespace %s and severity warning", alert, stack.Namespace)
	}

	// containerd SIGKILLed and restarted under the exporter: it reconnects, counts the gap, and the
	// next stop's report is counted.
	if err := theStack.RestartDaemon(stackContext()); err != nil {
		t.Fatal(err)
	}
	m = waitExporterConnected(t, exporter, metricsURL, 1)
	if gap, _ := m.Value("graceful_exporter_containerd_disconnected_seconds_total", nil); gap <= 0 {
		t.Errorf("disconnected seconds %v after a containerd restart, want > 0", gap)
	}
	nKilled += stopKillingAChild(t)
	waitMetric(t, metricsURL, "graceful_stops_total", with("result", "killed"), 2)
	m = waitMetric(t, metricsURL, "graceful_stop_processes_total", with("outcome", "killed"), float64(nKilled))
	if v, _ := m.Value("graceful_exporter_reports_invalid_total", nil); v != 0 {
		t.Errorf("invalid reports: %v", v)
	}

	if err := exporter.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := exporter.Exited(10 * time.Second); !exited || err != nil {
		t.Errorf("the exporter after SIGTERM: exited %v, %v; want a clean exit", exited, err)
	}
}

// TestAlertRule runs promtool's unit tests of contrib/exporter/alerts.yaml
// (testdata/alerts/alerts_test.yaml) on series shaped as the exporter exposes them: the alert
// fires for a kill that raises an existing series (increase), for a new series that appears with
// its kill counted (what increase alone misses), and not for a kill older than its window or for
// processes that exited.
func TestAlertRule(t *testing.T) {
	promtool := stack.Tool(t, "promtool", "debian", "install-prometheus.sh")
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yaml")
	cmd.Dir = filepath.Join(stack.ModuleRoot(), "integration", "testdata", "alerts")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// unitExecStart returns the arguments of a systemd unit's ExecStart, with the flags of set
// replaced (flag=value form).
func unitExecStart(t *testing.T, unit string, set map[string]string) []string {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "ExecStart=")
		if !ok {
			continue
		}
		fields := strings.Fields(line)
		args := fields[1:]
		for i, a := range args {
			if name, _, ok := strings.Cut(a, "="); ok {
				if v, ok := set[name]; ok {
					args[i] = name + "=" + v
					delete(set, name)
				}
			}
		}
		if len(set) > 0 {
			t.Fatalf("%s: ExecStart %q lacks the flags %v", unit, line, set)
		}
		return args
	}
	t.Fatalf("%s: no ExecStart", unit)
	return nil
}

// stopKillingAChild stops a container whose child ignores TERM, with a 1 s grace, and returns
// how many processes its report says were SIGKILLed (at least one).
func stopKillingAChild(t *testing.T) int {
	t.Helper()
	reports := subscribeReports(t) // a subscription lasts 30 s: one per stop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: ignoringChild + "trap \"exit 0\" TERM\necho ready\n" + loop,
		Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "1s"}})
	waitTrapped(t, c, "ignoring")
	stopExpect(t, c, 20*time.Second, exitOK)
	r := reports.NextReport(t, c.ID)
	if r.Drain == nil || r.Drain.Totals["killed"] == 0 {
		t.Fatalf("the report of the TERM-ignoring child's stop: %+v, want processes killed", r.Drain)
	}
	return r.Drain.Totals["killed"]
}

// waitExporterConnected is waitConnected for an exporter the test started: its exit fails the
// test at once.
func waitExporterConnected(t *testing.T, exporter *stack.Daemon, metricsURL string, reconnects float64) stack.Metrics {
	t.Helper()
	return waitConnected(t, metricsURL, reconnects, func() error {
		if exited, exit := exporter.Exited(0); exited {
			return fmt.Errorf("the exporter exited (%v):\n%s", exit, exporter.Log(8000))
		}
		return nil
	})
}

// waitMetric scrapes until the series of name with labels sum to want (the exporter counts a
// report a moment after the test sees it), and returns that scrape.
func waitMetric(t *testing.T, metricsURL, name string, labels map[string]string, want float64) stack.Metrics {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := stack.Scrape(metricsURL)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := m.Value(name, labels)
		if v == want {
			return m
		}
		if v > want || time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v; series: %v", name, labels, v, want, m.LabelSets(name))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// prometheus is a Prometheus server scraping the exporter every second and evaluating
// contrib/exporter/alerts.yaml every second.
type prometheus struct {
	url    string
	daemon *stack.Daemon
}

func startPrometheus(t *testing.T, bin, target string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	rules := filepath.Join(stack.ModuleRoot(), "contrib", "exporter", "alerts.yaml")
	config := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: graceful
    honor_labels: true
    static_configs: [{targets: [%q]}]
`, rules, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{url: fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+strings.TrimPrefix(p.url, "http://"), "--log.level=warn")
	var err error
	if p.daemon, err = stack.StartDaemon("prometheus", filepath.Join(dir, "prometheus.log"), cmd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.daemon.Log(8000))
		}
		p.daemon.Stop(t, 20*time.Second)
	})
	p.wait(t, "ready", func() (bool, error) {
		resp, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	return p
}

// wait polls check every 100 ms for up to 30 s.
func (p *prometheus) wait(t *testing.T, what string, check func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := check()
		if ok {
			return
		}
		if exited, exit := p.daemon.Exited(0); exited {
			t.Fatalf("prometheus exited (%v):\n%s", exit, p.daemon.Log(8000))
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: not %s after 30s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// api GETs an API path and decodes its data into v.
func (p *prometheus) api(path string, v any) error {
	resp, err := http.Get(p.url + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return err
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s", path, body.Error)
	}
	return json.Unmarshal(body.Data, v)
}

// waitIngested waits until the instant query expr sums to want.
func (p *prometheus) waitIngested(t *testing.T, expr string, want float64) {
	t.Helper()
	p.wait(t, "showing "+expr, func() (bool, error) {
		var data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		}
		if err := p.api("/api/v1/query?query="+url.QueryEscape("sum("+expr+")"), &data); err != nil {
			return false, err
		}
		if len(data.Result) != 1 {
			return false, fmt.Errorf("no result")
		}
		s, _ := data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return err == nil && v == want, fmt.Errorf("%s = %s", expr, s)
	})
}

// firingAfterNextEvaluation waits until the rule group has been evaluated after this call, and
// returns the firing alerts' labels.
func (p *prometheus) firingAfterNextEvaluation(t *testing.T) []map[string]string {
	t.Helper()
	since := time.Now()
	p.wait(t, "evaluating its rules", func() (bool, error) {
		var data struct {
			Groups []struct {
				LastEvaluation time.Time `json:"lastEvaluation"`
			} `json:"groups"`
		}
		if err := p.api("/api/v1/rules", &data); err != nil {
			return false, err
		}
		return len(data.Groups) == 1 && data.Groups[0].LastEvaluation.After(since), fmt.Errorf("rule groups %+v", data.Groups)
	})
	return p.firing(t)
}

func (p *prometheus) firing(t *testing.T) []map[string]string {
	t.Helper()
	var data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := p.api("/api/v1/alerts", &data); err != nil {
		t.Fatal(err)
	}
	var firing []map[string]string
	for _, a := range data.Alerts {
		if a.State == "firing" {
			firing = append(firing, a.Labels)
		}
	}
	return firing
}

// waitFiring waits until the alert name fires and returns its labels.
func (p *prometheus) waitFiring(t *testing.T, name string) map[string]string {
	t.Helper()
	var found map[string]string
	p.wait(t, "firing "+name, func() (bool, error) {
		for _, a := range p.firing(t) {
			if a["alertname"] == name {
				found = a
				return true, nil
			}
		}
		return false, fmt.Errorf("%s not firing", name)
	})
	return found
}
