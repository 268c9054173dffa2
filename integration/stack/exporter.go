package stack

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// BuildExporter builds graceful-exporter (static) into dir and returns its path.
func BuildExporter(dir string) (string, error) {
	out := filepath.Join(dir, "graceful-exporter")
	return out, buildGo(out, "./cmd/graceful-exporter", false)
}

// Metrics is one scrape of a Prometheus text endpoint.
type Metrics map[string]*dto.MetricFamily

// Scrape reads the metrics at url (http://HOST:PORT/metrics).
func Scrape(url string) (Metrics, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return Metrics(families), nil
}

// Value sums the series of the counter, gauge or histogram (its count) name whose labels include
// labels; found is false when no series matches.
func (m Metrics) Value(name string, labels map[string]string) (v float64, found bool) {
	f := m[name]
	if f == nil {
		return 0, false
	}
	for _, s := range f.Metric {
		if !hasLabels(s, labels) {
			continue
		}
		found = true
		switch {
		case s.Counter != nil:
			v += s.Counter.GetValue()
		case s.Gauge != nil:
			v += s.Gauge.GetValue()
		case s.Histogram != nil:
			v += float64(s.Histogram.GetSampleCount())
		}
	}
	return v, found
}

// LabelSets lists the label sets of name's series, for messages.
func (m Metrics) LabelSets(name string) []string {
	var sets []string
	if f := m[name]; f != nil {
		for _, s := range f.Metric {
			set := "{"
			for i, l := range s.Label {
				if i > 0 {
					set += ","
				}
				set += l.GetName() + "=" + strconv.Quote(l.GetValue())
			}
			sets = append(sets, set+"}")
		}
	}
	return sets
}

// hasLabels reports whether s has the labels want; an empty value also matches an absent label,
// as the text format leaves out empty labels.
func hasLabels(s *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		ok := v == ""
		for _, l := range s.Label {
			if l.GetName() == k {
				ok = l.GetValue() == v
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
