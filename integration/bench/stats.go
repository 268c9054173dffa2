package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// stats summarises samples.
type stats struct {
	n                int
	median, min, max float64
	p90              float64
	sorted           []float64
}

func summarise(samples []float64) stats {
	if len(samples) == 0 {
		return stats{}
	}
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	st := stats{n: len(s), min: s[0], max: s[len(s)-1], sorted: s}
	if len(s)%2 == 1 {
		st.median = s[len(s)/2]
	} else {
		st.median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	st.p90 = percentile(s, 0.9)
	return st
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// unit formats values of one kind of measurement.
type unit struct {
	name   string
	scale  float64 // the samples are divided by scale before formatting
	digits int
}

var (
	millis   = unit{name: "ms", scale: 1e6, digits: 1} // samples in ns
	mebibyte = unit{name: "MiB", scale: 1 << 20, digits: 1}
	count    = unit{name: "", scale: 1, digits: 0}
	micros   = unit{name: "µs", scale: 1e3, digits: 0} // samples in ns
)

func (u unit) format(v float64) string {
	s := fmt.Sprintf("%.*f", u.digits, v/u.scale)
	if u.name != "" {
		s += " " + u.name
	}
	return s
}

// cell is "median [min–max]" for the samples, or "—" when there are none.
func (u unit) cell(st stats) string {
	if st.n == 0 {
		return "—"
	}
	if st.n == 1 {
		return u.format(st.median)
	}
	return fmt.Sprintf("%s [%s–%s]", u.format(st.median), strings.TrimSuffix(u.format(st.min), " "+u.name), u.format(st.max))
}

// row is one line of the results table.
type row struct {
	metric   string
	graceful string
	stock    string
	ratio    string
	target   string
	met      string // "yes", "**NO**", or "—" when there is no target
}

// ratioOf formats graceful's median over stock's.
func ratioOf(g, s stats) (float64, string) {
	if g.n == 0 || s.n == 0 {
		return math.NaN(), "—"
	}
	if s.median == 0 {
		if g.median == 0 {
			return 1, "1.000"
		}
		return math.Inf(1), "∞"
	}
	r := g.median / s.median
	return r, fmt.Sprintf("%.3f", r)
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**NO**"
}
