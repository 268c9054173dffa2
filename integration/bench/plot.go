package main

import (
	"fmt"
	"math"
	"strings"
)

// barGroup is one category of a bar chart: one bar per series (median, min–max whisker).
type barGroup struct {
	label string
	// bars are the samples of each series, in the order of barChart.series (nil: no bar).
	bars []stats
	// ref, when positive, draws a dashed reference line across the group (a budget), labelled.
	ref      float64
	refLabel string
}

// barChart is a grouped bar chart, drawn with the axes, grid and legend of the stop latency plot.
type barChart struct {
	title, yLabel string
	u             unit // formats the values (and scales them for the axis)
	series        []string
	colors        []string
	groups        []barGroup
	note          string // one line under the legend
}

var seriesColors = []string{"#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"}

func (c barChart) svg() string {
	const (
		width, height          = 720, 440
		left, right, top, bott = 80, 30, 50, 70
	)
	plotW, plotH := float64(width-left-right), float64(height-top-bott)
	maxY := 0.0
	for _, g := range c.groups {
		for _, st := range g.bars {
			if st.n > 0 {
				maxY = max(maxY, st.max/c.u.scale)
			}
		}
		maxY = max(maxY, g.ref/c.u.scale)
	}
	maxY *= 1.12 // room for the value labels
	step := niceStep(maxY / 5)
	if step == 0 {
		step = 1
	}
	topY := math.Ceil(maxY/step) * step
	yOf := func(v float64) float64 { return float64(top) + plotH*(1-v/topY) }

	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w(`<text x="%d" y="24" text-anchor="middle" font-size="15">%s</text>`+"\n", width/2, c.title)
	for y := 0.0; y <= topY+step/2; y += step {
		py := yOf(y)
		w(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, py, width-right, py)
		w(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py+4, trimFloat(y))
	}
	w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, height-bott)
	w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, height-bott, width-right, height-bott)
	w(`<text transform="translate(22 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", float64(top)+plotH/2, c.yLabel)

	groupW := plotW / float64(max(1, len(c.groups)))
	barW := math.Min(60, groupW*0.8/float64(max(1, len(c.series))))
	for gi, g := range c.groups {
		x0 := float64(left) + groupW*float64(gi) + (groupW-barW*float64(len(c.series)))/2
		w(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", float64(left)+groupW*(float64(gi)+0.5), height-bott+19, g.label)
		for si, st := range g.bars {
			if st.n == 0 {
				continue
			}
			color := c.colors[si%len(c.colors)]
			x := x0 + barW*float64(si)
			cx := x + barW/2
			w(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.85"><title>%s, %s: median %s [%s–%s], %d samples</title></rect>`+"\n",
				x+1, yOf(st.median/c.u.scale), barW-2, yOf(0)-yOf(st.median/c.u.scale), color,
				c.series[si], g.label, c.u.format(st.median), c.u.format(st.min), c.u.format(st.max), st.n)
			if st.n > 1 {
				w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx, yOf(st.min/c.u.scale), cx, yOf(st.max/c.u.scale))
				for _, v := range []float64{st.min, st.max} {
					w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx-4, yOf(v/c.u.scale), cx+4, yOf(v/c.u.scale))
				}
			}
			w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10" fill="#222">%s</text>`+"\n", cx, yOf(st.max/c.u.scale)-5,
				strings.TrimSuffix(c.u.format(st.median), " "+c.u.name))
		}
		if g.ref > 0 {
			py := yOf(g.ref / c.u.scale)
			gx := float64(left) + groupW*float64(gi)
			w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#d62728" stroke-dasharray="5,3" stroke-width="1.5"/>`+"\n", gx+6, py, gx+groupW-6, py)
			w(`<text x="%.1f" y="%.1f" text-anchor="end" font-size="10" fill="#d62728">%s</text>`+"\n", gx+groupW-6, py-4, g.refLabel)
		}
	}
	// Legend, in one row under the axis; the note under it.
	lx, ly := float64(left), height-bott+40
	for i, s := range c.series {
		w(`<rect x="%.1f" y="%d" width="16" height="10" fill="%s"/>`+"\n", lx, ly-9, c.colors[i%len(c.colors)])
		w(`<text x="%.1f" y="%d">%s</text>`+"\n", lx+22, ly, s)
		lx += 22 + 8*float64(len([]rune(s))) + 24
	}
	if c.note != "" {
		w(`<text x="%d" y="%d" font-size="11" fill="#444">%s</text>`+"\n", left, ly+20, c.note)
	}
	w("</svg>\n")
	return sb.String()
}
