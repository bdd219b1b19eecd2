package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// A figure is one PNG of a measure against the Service count, one line per
// series.
type figure struct {
	file, title, yLabel string
	logY                bool
	series              []series
}

type series struct {
	name  string
	value func(*ImplResult) (float64, bool) // false: no point at this scale
	impl  string
}

// Colours are fixed per implementation so every plot reads the same way.
var colours = map[string]color.Color{
	"sluice":   color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"iptables": color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	"nftables": color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	"limit":    color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff},
}

func perImpl(label string, value func(*ImplResult) (float64, bool)) []series {
	names := map[string]string{"sluice": "Sluice", "iptables": "kube-proxy iptables", "nftables": "kube-proxy nftables"}
	var out []series
	for _, impl := range impls {
		out = append(out, series{name: names[impl] + label, value: value, impl: impl})
	}
	return out
}

func medianOf(f func(*ImplResult) []float64) func(*ImplResult) (float64, bool) {
	return func(x *ImplResult) (float64, bool) {
		v := f(x)
		return median(v), len(v) > 0
	}
}

// figures lists the plots docs/benchmarks.md shows.
func figures() []figure {
	limit := series{name: "pod IP (the limit)", impl: "limit", value: medianOf(func(x *ImplResult) []float64 { return x.PodIPConnPerSec })}
	limitTput := series{name: "pod IP (the limit)", impl: "limit", value: medianOf(func(x *ImplResult) []float64 { return x.PodIPGbps })}
	return []figure{
		{file: "conn-rate.png", title: "Connections per second through a ClusterIP", yLabel: "connections/s (median)",
			series: append([]series{limit}, perImpl("", medianOf(func(x *ImplResult) []float64 { return x.ConnPerSec }))...)},
		{file: "throughput.png", title: "One TCP stream through a ClusterIP (iperf3)", yLabel: "Gbit/s (median)",
			series: append([]series{limitTput}, perImpl("", medianOf(func(x *ImplResult) []float64 { return x.Gbps }))...)},
		{file: "sync.png", title: "Sync: thaw to the last Service answering", yLabel: "seconds (log; a timeout at its bound)", logY: true,
			series: perImpl("", func(x *ImplResult) (float64, bool) { return x.SyncSeconds, x.SyncSeconds > 0 })},
		{file: "change-latency.png", title: "EndpointSlice change to the datapath using it (p99)", yLabel: "milliseconds (log)", logY: true,
			series: perImpl("", func(x *ImplResult) (float64, bool) { return x.ChangeP99ms, x.ChangesSeen > 0 })},
		{file: "rss.png", title: "Resident memory of the agent or kube-proxy", yLabel: "MiB",
			series: perImpl("", func(x *ImplResult) (float64, bool) { return x.RSSMiB, x.RSSMiB > 0 })},
		{file: "memory.png", title: "RSS plus kernel memory (BPF maps; conntrack and rules)", yLabel: "MiB",
			series: perImpl("", func(x *ImplResult) (float64, bool) {
				if x.KernelMiB == nil || x.RSSMiB == 0 {
					return 0, false
				}
				return x.RSSMiB + *x.KernelMiB, true
			})},
	}
}

// writePlots renders every figure with data as a PNG in dir and returns
// those figures, in order.
func writePlots(dir string, r *Results) ([]figure, error) {
	if len(r.Scales) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []figure
	for _, f := range figures() {
		p := plot.New()
		p.Title.Text = f.title
		p.X.Label.Text = "Services (10 endpoints each)"
		p.Y.Label.Text = f.yLabel
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = scaleTicks(r)
		if f.logY {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		} else {
			p.Y.Min = 0
		}
		// Linear plots start at zero, leaving the bottom right free for the
		// legend; log plots get headroom above the data for it instead.
		p.Legend.Top, p.Legend.Left = f.logY, f.logY
		if !f.logY {
			p.Y.Tick.Marker = plainTicks{}
		}
		p.Add(plotter.NewGrid())
		drawn, bottom, top := 0, math.Inf(1), 0.0
		for _, s := range f.series {
			var pts plotter.XYs
			for _, sc := range r.Scales {
				x := sc.Impl[s.impl]
				if s.impl == "limit" {
					x = sc.Impl["sluice"] // the limit is measured on the Sluice node
				}
				if x == nil {
					continue
				}
				if v, ok := s.value(x); ok && (!f.logY || v > 0) {
					pts = append(pts, plotter.XY{X: float64(sc.Services), Y: v})
					bottom, top = min(bottom, v), max(top, v)
				}
			}
			if len(pts) == 0 {
				continue
			}
			line, points, err := plotter.NewLinePoints(pts)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.file, err)
			}
			line.Color, points.Color = colours[s.impl], colours[s.impl]
			points.Shape = draw.CircleGlyph{}
			if s.impl == "limit" {
				line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			line.Width = vg.Points(1.5)
			p.Add(line, points)
			p.Legend.Add(s.name, line, points)
			drawn++
		}
		if drawn == 0 {
			continue // not measured in this run (an older results file)
		}
		// Log axes need positive bounds even where a series is flat.
		p.X.Min, p.X.Max = float64(r.Scales[0].Services)/1.5, float64(r.Scales[len(r.Scales)-1].Services)*1.5
		if f.logY {
			p.Y.Min, p.Y.Max = bottom/2, top*20
		}
		if err := p.Save(6*vg.Inch, 4*vg.Inch, filepath.Join(dir, f.file)); err != nil {
			return nil, fmt.Errorf("%s: %w", f.file, err)
		}
		written = append(written, f)
	}
	return written, nil
}

// scaleTicks marks exactly the measured Service counts.
func scaleTicks(r *Results) plot.ConstantTicks {
	var t plot.ConstantTicks
	for _, s := range r.Scales {
		t = append(t, plot.Tick{Value: float64(s.Services), Label: fmt.Sprintf("%d", s.Services)})
	}
	return t
}

// plainTicks are gonum's default ticks labelled without trailing zeros.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
		}
	}
	return ticks
}
