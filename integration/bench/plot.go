package main

import (
	"fmt"
	"image/color"
	"math"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/graceful-shim/graceful/integration/stack"
)

// The plots are drawn with gonum.org/v1/plot and saved as SVG (vgsvg, chosen by plot.Save from the
// file's extension), all of one size: 540×330 pt, 720×440 px at 96 px to the inch. Lengths below are
// in points; a px of the page is 0.75 pt.
const (
	plotWidth, plotHeight vg.Length = 540, 330
	px                    vg.Length = 0.75
)

var (
	// The library's default, Liberation Serif: an SVG names its fonts with no fallback, and a viewer
	// without it draws the text in its default font, usually Times, whose metrics are the same.
	plotFont = plot.DefaultFont
	black    = color.Gray{}
	darkGrey = rgb(0x444444)
	gridGrey = rgb(0xdddddd)
	budget   = rgb(0xd62728)

	seriesColors  = []color.Color{rgb(0x7f7f7f), rgb(0x1f77b4), rgb(0xff7f0e), rgb(0x2ca02c)}
	runtimeColors = map[string]color.Color{stack.GracefulRuntime: rgb(0x1f77b4), stack.StockRuntime: rgb(0xd62728)}
)

func rgb(v uint32) color.RGBA {
	return color.RGBA{R: uint8(v >> 16), G: uint8(v >> 8), B: uint8(v), A: 0xff}
}

// textStyle is the style of a label drawn in the data area, anchored at (x, y) by xAlign and yAlign.
func textStyle(size vg.Length, c color.Color, xAlign text.XAlignment, yAlign text.YAlignment) text.Style {
	return text.Style{Color: c, Font: font.From(plotFont, size), XAlign: xAlign, YAlign: yAlign, Handler: plot.DefaultTextHandler}
}

// newPlot is a plot with the title, axis labels, font sizes and horizontal grid lines every plot has.
func newPlot(title, xLabel, yLabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(plotFont, 15*px)
	p.Title.Padding = 10 * px
	p.X.Label.Text, p.Y.Label.Text = xLabel, yLabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(plotFont, 12*px)
		a.Tick.Label.Font = font.From(plotFont, 12*px)
	}
	p.Legend.TextStyle.Font = font.From(plotFont, 12*px)
	p.Legend.ThumbnailWidth = 24 * px
	p.Legend.Padding = 6 * px
	p.Legend.Top = true
	p.Legend.XOffs, p.Legend.YOffs = -8*px, -8*px // off the right edge and the top
	g := plotter.NewGrid()
	g.Vertical.Color = nil
	g.Horizontal.Color = gridGrey
	g.Horizontal.Width = px
	g.Horizontal.Dashes = nil
	p.Add(g)
	return p
}

// yAxis makes the Y axis start at 0 and end at the first multiple of a round step (1, 2 or 5 times
// a power of ten, about a fifth of maxY) at or above maxY, with a tick and a grid line at each
// multiple. It returns the axis's end.
func yAxis(p *plot.Plot, maxY float64) float64 {
	step := niceStep(maxY / 5)
	if step == 0 {
		step = 1
	}
	top := math.Ceil(maxY/step) * step
	if top == 0 {
		top = step
	}
	p.Y.Min, p.Y.Max = 0, top
	p.Y.Tick.Marker = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var ticks []plot.Tick
		for i := math.Ceil(lo / step); i*step <= hi+step/1e6; i++ {
			ticks = append(ticks, plot.Tick{Value: i * step, Label: trimFloat(i * step)})
		}
		return ticks
	})
	return top
}

// niceStep rounds a raw axis step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 0
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "-" {
		return "0"
	}
	return s
}

// labels are texts at points of the data area, in one style, moved by offset (points).
func labels(xys plotter.XYs, texts []string, style text.Style, offset vg.Point) (*plotter.Labels, error) {
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i] = style
	}
	l.Offset = offset
	return l, nil
}

// errorBars are vertical min–max bars with caps, at the points (x, median).
type errorBars struct {
	plotter.XYs
	plotter.YErrors
}

func newErrorBars(e errorBars, c color.Color, width vg.Length) (*plotter.YErrorBars, error) {
	bars, err := plotter.NewYErrorBars(e)
	if err != nil {
		return nil, err
	}
	bars.LineStyle.Color = c
	bars.LineStyle.Width = width
	bars.CapWidth = 8 * px
	return bars, nil
}

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
	colors        []color.Color
	groups        []barGroup
	note          string // one line under the axis
}

// save draws the chart into path (SVG).
func (c barChart) save(path string) error {
	p := newPlot(c.title, c.note, c.yLabel)
	p.X.Label.TextStyle.Font = font.From(plotFont, 11*px)
	p.X.Label.TextStyle.Color = darkGrey
	names := make([]string, len(c.groups))
	maxY := 0.0
	for i, g := range c.groups {
		names[i] = g.label
		for _, st := range g.bars {
			if st.n > 0 {
				maxY = max(maxY, st.max/c.u.scale)
			}
		}
		maxY = max(maxY, g.ref/c.u.scale)
	}
	if maxY == 0 {
		maxY = 1
	}
	p.NominalX(names...)
	xMin, xMax := -0.5, float64(len(c.groups))-0.5

	// One bar chart per series; their width and offset are set once the data area is known.
	k := len(c.series)
	bars := make([]*plotter.BarChart, k)
	for si := range c.series {
		vals := make(plotter.Values, len(c.groups))
		for gi, g := range c.groups {
			if si < len(g.bars) && g.bars[si].n > 0 {
				vals[gi] = g.bars[si].median / c.u.scale
			}
		}
		b, err := plotter.NewBarChart(vals, 1)
		if err != nil {
			return err
		}
		col := color.NRGBAModel.Convert(c.colors[si%len(c.colors)]).(color.NRGBA)
		col.A = 0xd9 // 85% opaque
		b.Color = col
		b.LineStyle.Width = 0
		bars[si] = b
		p.Legend.Add(c.series[si], b)
	}

	// Room at the top of the data area for the legend, above the bars and their value labels.
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = xMin, xMax, 0, maxY
	area := p.DataCanvas(draw.New(vgsvg.New(plotWidth, plotHeight)))
	h := area.Size().Y
	free := h - p.Legend.Rectangle(area).Size().Y - 8*px - 20*px
	top := maxY * 1.12
	if free > h/3 {
		top = max(top, maxY*float64(h/free))
	}
	top = yAxis(p, top)

	area = p.DataCanvas(draw.New(vgsvg.New(plotWidth, plotHeight)))
	perGroup := area.Size().X / vg.Length(xMax-xMin) // points per category
	barW := min(60*px, perGroup*0.8/vg.Length(max(1, k)))
	for si, b := range bars {
		off := barW * vg.Length(float64(si)-float64(k-1)/2)
		b.Width, b.Offset = barW-2*px, off
		p.Add(b)

		var whiskers errorBars
		var tops plotter.XYs
		var texts []string
		for gi, g := range c.groups {
			if si >= len(g.bars) || g.bars[si].n == 0 {
				continue
			}
			st := g.bars[si]
			x := float64(gi) + float64(off/perGroup)
			if st.n > 1 {
				whiskers.XYs = append(whiskers.XYs, plotter.XY{X: x, Y: st.median / c.u.scale})
				whiskers.YErrors = append(whiskers.YErrors, struct{ Low, High float64 }{(st.median - st.min) / c.u.scale, (st.max - st.median) / c.u.scale})
			}
			tops = append(tops, plotter.XY{X: x, Y: st.max / c.u.scale})
			texts = append(texts, strings.TrimSuffix(c.u.format(st.median), " "+c.u.name))
		}
		if len(whiskers.XYs) > 0 {
			e, err := newErrorBars(whiskers, black, px)
			if err != nil {
				return err
			}
			p.Add(e)
		}
		l, err := labels(tops, texts, textStyle(10*px, rgb(0x222222), text.XCenter, text.YBottom), vg.Point{Y: 5 * px})
		if err != nil {
			return err
		}
		p.Add(l)
	}
	inset := float64(6 * px / perGroup)
	for gi, g := range c.groups {
		if g.ref <= 0 {
			continue
		}
		y := g.ref / c.u.scale
		left, right := float64(gi)-0.5+inset, float64(gi)+0.5-inset
		line, err := plotter.NewLine(plotter.XYs{{X: left, Y: y}, {X: right, Y: y}})
		if err != nil {
			return err
		}
		line.LineStyle = draw.LineStyle{Color: budget, Width: 1.5 * px, Dashes: []vg.Length{5 * px, 3 * px}}
		l, err := labels(plotter.XYs{{X: right, Y: y}}, []string{g.refLabel}, textStyle(10*px, budget, text.XRight, text.YBottom), vg.Point{Y: 4 * px})
		if err != nil {
			return err
		}
		p.Add(line, l)
	}
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = xMin, xMax, 0, top
	return p.Save(plotWidth, plotHeight, path)
}

// saveStopPlot draws the stop latency's median (with min–max bars) against N for both shims into
// path (SVG).
func (b *bench) saveStopPlot(path string) error {
	var pts []latencyPoint
	for _, pt := range b.stops {
		pts = append(pts, latencyPoint{x: pt.n, latency: pt.latency})
	}
	return latencyPlot{
		title:  "Stop latency (SIGTERM) with N extra processes: median, min–max bars",
		xLabel: "N, extra processes in the container",
		none:   "no stop latency measured",
		points: pts,
	}.save(path)
}

// saveHostPlot draws the host-size sweep's stop latency (median, min–max bars) against the number
// of idle host processes for both shims, with the flatness budget over graceful's median at the
// smallest size, into path (SVG).
func (b *bench) saveHostPlot(path string) error {
	c := latencyPlot{
		title:  fmt.Sprintf("Stop latency (SIGTERM) of a %d-process container against idle host processes", hostSweepN),
		xLabel: "idle processes on the host, outside the container",
		none:   "no host-size sweep measured",
		// The lines stay about level, well above 0.
		legendLow: true,
	}
	var lo *hostPoint
	for _, pt := range b.hostPoints {
		c.points = append(c.points, latencyPoint{x: pt.hosts, latency: pt.latency})
		if lo == nil || pt.hosts < lo.hosts {
			lo = pt
		}
	}
	if len(b.hostPoints) > 1 {
		if g := lo.latency.g(); g.n > 0 {
			c.ref = g.median * hostFlatTarget
			c.refLabel = fmt.Sprintf("flat: %.2f × graceful's median at %d", hostFlatTarget, lo.hosts)
		}
	}
	return c.save(path)
}

// latencyPoint is one x of a latency plot: the samples of both shims there (ns).
type latencyPoint struct {
	x       int
	latency samples
}

// latencyPlot draws the median latency (with min–max bars) of both shims against x, one line
// each, with graceful's median over stock's above each x.
type latencyPlot struct {
	title, xLabel string
	none          string // the text shown when there is no point
	points        []latencyPoint
	// ref, when positive, draws a dashed horizontal line (a budget, ns) across the plot, labelled.
	ref      float64
	refLabel string
	// legendLow puts the legend at the bottom right, for data that stays well above 0 (a flat
	// line) and would run under a legend at the top left.
	legendLow bool
}

func (c latencyPlot) save(path string) error {
	p := newPlot(c.title, c.xLabel, "stop latency (ms)")
	p.Legend.Left, p.Legend.XOffs = true, 8*px
	if c.legendLow {
		p.Legend.Top, p.Legend.Left = false, false
		p.Legend.XOffs, p.Legend.YOffs = -8*px, 8*px
	}
	var ns []int
	for _, pt := range c.points {
		ns = append(ns, pt.x)
	}
	if len(ns) == 0 {
		l, err := labels(plotter.XYs{{X: 0.5, Y: 0.5}}, []string{c.none}, textStyle(12*px, black, text.XCenter, text.YCenter), vg.Point{})
		if err != nil {
			return err
		}
		p.Add(l)
		p.X.Min, p.X.Max = 0, 1
		p.X.Tick.Marker = plot.ConstantTicks(nil)
		yAxis(p, 0)
		return p.Save(plotWidth, plotHeight, path)
	}
	minN, maxN := float64(ns[0]), float64(ns[0])
	var ticks []plot.Tick
	for _, n := range ns {
		minN, maxN = math.Min(minN, float64(n)), math.Max(maxN, float64(n))
		ticks = append(ticks, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	logX := len(ns) > 1 && minN > 0 && maxN/minN >= 10
	// The axis, in its scale (log10 N or N), spans the Ns with 5% of its length free at each end.
	to, from := func(v float64) float64 { return v }, func(v float64) float64 { return v }
	if logX {
		p.X.Scale = plot.LogScale{}
		p.X.Label.Text += " (log scale)"
		to, from = math.Log10, func(v float64) float64 { return math.Pow(10, v) }
	}
	lo, hi := to(minN), to(maxN)
	if lo == hi {
		lo, hi = lo-0.9, hi+0.9
	}
	margin := (hi - lo) * 0.05 / 0.9
	lo, hi = lo-margin, hi+margin
	xMin, xMax := from(lo), from(hi)
	// Shift the two series apart a little (4 px of the axis) so their bars do not overlap.
	shift := func(n float64, i int) float64 { return from(to(n) + float64(2*i-1)*(hi-lo)*4/610) }

	for i, rt := range order {
		col := runtimeColors[rt]
		var pts plotter.XYs
		var whiskers errorBars
		for _, pt := range c.points {
			st := summarise(pt.latency[rt])
			if st.n == 0 {
				continue
			}
			x := shift(float64(pt.x), i)
			pts = append(pts, plotter.XY{X: x, Y: st.median / 1e6})
			whiskers.XYs = append(whiskers.XYs, plotter.XY{X: x, Y: st.median / 1e6})
			whiskers.YErrors = append(whiskers.YErrors, struct{ Low, High float64 }{(st.median - st.min) / 1e6, (st.max - st.median) / 1e6})
		}
		line := &plotter.Line{LineStyle: draw.LineStyle{Color: col, Width: 2 * px}}
		points := &plotter.Scatter{GlyphStyle: draw.GlyphStyle{Color: col, Radius: 4 * px, Shape: draw.CircleGlyph{}}}
		if len(pts) > 0 {
			e, err := newErrorBars(whiskers, col, 1.5*px)
			if err != nil {
				return err
			}
			if len(pts) > 1 {
				line.XYs = pts
				p.Add(line)
			}
			points.XYs = pts
			p.Add(e, points)
		}
		p.Legend.Add(fmt.Sprintf("%s (%s)", short(rt), rt), line, points)
	}
	// The ratio at each N, above both points.
	var at plotter.XYs
	var ratios []string
	for _, pt := range c.points {
		g, st := summarise(pt.latency[stack.GracefulRuntime]), summarise(pt.latency[stack.StockRuntime])
		if g.n == 0 || st.n == 0 || st.median == 0 {
			continue
		}
		at = append(at, plotter.XY{X: float64(pt.x), Y: math.Max(g.max, st.max) / 1e6})
		ratios = append(ratios, fmt.Sprintf("×%.2f", g.median/st.median))
	}
	if len(at) > 0 {
		l, err := labels(at, ratios, textStyle(11*px, darkGrey, text.XCenter, text.YBottom), vg.Point{Y: 8 * px})
		if err != nil {
			return err
		}
		p.Add(l)
	}
	p.Legend.Add("×r: graceful median / stock median")
	maxY := 0.0
	for _, pt := range c.points {
		for _, rt := range order {
			if st := summarise(pt.latency[rt]); st.n > 0 {
				maxY = max(maxY, st.max/1e6)
			}
		}
	}
	if c.ref > 0 {
		y := c.ref / 1e6
		maxY = max(maxY, y)
		line, err := plotter.NewLine(plotter.XYs{{X: xMin, Y: y}, {X: xMax, Y: y}})
		if err != nil {
			return err
		}
		line.LineStyle = draw.LineStyle{Color: budget, Width: 1.5 * px, Dashes: []vg.Length{5 * px, 3 * px}}
		l, err := labels(plotter.XYs{{X: xMax, Y: y}}, []string{c.refLabel}, textStyle(10*px, budget, text.XRight, text.YBottom), vg.Point{X: -4 * px, Y: 4 * px})
		if err != nil {
			return err
		}
		p.Add(line, l)
	}
	yAxis(p, maxY)
	p.X.Min, p.X.Max = xMin, xMax
	return p.Save(plotWidth, plotHeight, path)
}
