// Command benchplot draws the figures of BENCHMARKS.md as SVG charts, with
// gonum.org/v1/plot, from tab-separated files: make bench and make bench-scale run it
// over their fresh results (bench-out/), and docs/figures/ holds the figures recorded
// in BENCHMARKS.md, drawn the same way.
//
//	benchplot -in DIR [-out DIR]
//
// For each chart below whose NAME.tsv is in -in, it writes NAME.svg to -out. A file
// is lines starting with # (notes: where the figures come from), a header row naming
// the columns, and one row per x value: the first column is x, each other column one
// series, an empty cell a figure not measured.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// chart is how one file is drawn.
type chart struct {
	title, x, y string
	// bars: grouped bars over the first column's values as categories; otherwise lines
	// over x (numbers, or categories when they are not).
	bars       bool
	logX, logY bool
	// perX, when not 0: each figure is multiplied by it and divided by x (a process's
	// MiB as bytes a device).
	perX float64
	// pairs: the series come in groups, each a reference (dashed; its name starts with
	// "whoami") and what is measured against it (solid; a third, as the fast path,
	// dotted), each group in one colour.
	pairs bool
}

// charts are the charts benchplot knows, by file name.
var charts = map[string]chart{
	"throughput": {title: "DO queries per second against zone size, beside whoami", x: "devices in the zone", y: "queries per second", logX: true, pairs: true},
	"fastpath":   {title: "DO queries per second on one core: the fast path, whoami and Go's UDP ceilings", x: "", y: "queries per second", bars: true},
	"latency":    {title: "Latency distribution of DO answers", x: "percentile", y: "latency, ms", logY: true},
	"memory":     {title: "Resident memory per device", x: "devices in the zone", y: "bytes a device", logX: true, perX: 1 << 20},
	"enrollment": {title: "Enrollment rate (16 concurrent clients)", x: "", y: "per second", bars: true},
	"revocation": {title: "Revocation to disconnection at the MQTT broker (100 devices)", x: "run", y: "seconds", bars: true},
}

func main() {
	in := flag.String("in", "", "directory of the .tsv files (required)")
	out := flag.String("out", "", "directory for the .svg files (default: -in)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: benchplot -in DIR [-out DIR]\n\nDraws BENCHMARKS.md's figures as SVG: NAME.svg for each NAME.tsv of -in among %s.\n\nexample:\n  go run ./test/benchplot -in docs/figures\n\nflags:\n", strings.Join(names(), ", "))
		flag.PrintDefaults()
	}
	flag.Parse()
	if *in == "" {
		flag.Usage()
		os.Exit(2)
	}
	if *out == "" {
		*out = *in
	}
	written, err := drawAll(*in, *out)
	for _, f := range written {
		fmt.Println("wrote", f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchplot:", err)
		os.Exit(1)
	}
}

func names() []string {
	var n []string
	for name := range charts {
		n = append(n, name)
	}
	slices.Sort(n)
	return n
}

// drawAll draws every chart whose file is in dir; none is an error.
func drawAll(dir, outDir string) ([]string, error) {
	var written []string
	for _, name := range names() {
		t, err := readTable(filepath.Join(dir, name+".tsv"))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return written, err
		}
		file := filepath.Join(outDir, name+".svg")
		if err := charts[name].draw(t, file); err != nil {
			return written, fmt.Errorf("%s: %w", file, err)
		}
		written = append(written, file)
	}
	if len(written) == 0 {
		return nil, fmt.Errorf("no chart's file (%s.tsv) in %s", strings.Join(names(), ".tsv, "), dir)
	}
	return written, nil
}

// table is a file's figures: x values and, for each series, its figures (NaN where
// the cell is empty).
type table struct {
	xName  string
	x      []string
	series []string
	values [][]float64 // values[series][row]
}

func readTable(file string) (*table, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t := &table{}
	sc := bufio.NewScanner(f)
	for line := 0; sc.Scan(); {
		line++
		text := strings.TrimRight(sc.Text(), "\r")
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		cells := strings.Split(text, "\t")
		if t.series == nil {
			if len(cells) < 2 {
				return nil, fmt.Errorf("%s:%d: the header names x and no series", file, line)
			}
			t.xName, t.series = cells[0], cells[1:]
			t.values = make([][]float64, len(t.series))
			continue
		}
		if len(cells) != len(t.series)+1 {
			return nil, fmt.Errorf("%s:%d: %d cells, the header has %d", file, line, len(cells), len(t.series)+1)
		}
		t.x = append(t.x, cells[0])
		for i, c := range cells[1:] {
			v := math.NaN()
			if c = strings.TrimSpace(c); c != "" {
				if v, err = strconv.ParseFloat(c, 64); err != nil {
					return nil, fmt.Errorf("%s:%d: %q is not a number", file, line, c)
				}
			}
			t.values[i] = append(t.values[i], v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.x) == 0 {
		return nil, fmt.Errorf("%s: no figures", file)
	}
	return t, nil
}

// numericX is x as numbers, or nil when one of them is not a number.
func (t *table) numericX() []float64 {
	var xs []float64
	for _, s := range t.x {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil
		}
		xs = append(xs, v)
	}
	return xs
}

// The picture's size, and the plotting area's width that bars are sized by (about the
// picture's less the legend and the y axis).
const (
	width, height = 22 * vg.Centimeter, 11 * vg.Centimeter
	dataWidth     = 13 * vg.Centimeter
)

func (c chart) draw(t *table, file string) error {
	if len(t.x) == 1 {
		c.bars, c.pairs = true, false // one x, as make bench's one zone size: no line to draw
	}
	p := plot.New()
	p.Title.Text = c.title
	p.X.Label.Text, p.Y.Label.Text = c.x, c.y
	p.Add(plotter.NewGrid())
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, false
	xs := t.numericX()
	if c.perX != 0 && xs == nil {
		return fmt.Errorf("figures per %s need numbers in the first column", t.xName)
	}
	if c.bars || xs == nil {
		labels := make([]string, len(t.x))
		for i, s := range t.x {
			labels[i] = s
			if xs != nil {
				labels[i] = thousands(xs[i])
			}
		}
		p.NominalX(labels...)
	} else if c.logX {
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, thousandsTicks{plot.LogTicks{Prec: -1}}
	} else {
		p.X.Tick.Marker = thousandsTicks{plot.DefaultTicks{}}
	}
	p.Y.Tick.Marker = thousandsTicks{plot.DefaultTicks{}}
	if c.logY {
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	}
	if c.perX != 0 {
		for _, v := range t.values {
			for j := range v {
				v[j] = v[j] * c.perX / xs[j]
			}
		}
	}
	barWidth := dataWidth * 3 / 4 / vg.Length(len(t.x)*len(t.series))
	group, role := -1, 0
	for i, name := range t.series {
		col, dashes := plotutil.Color(i), plotutil.Dashes(0)
		if c.pairs {
			if group < 0 || strings.HasPrefix(name, "whoami") {
				group, role = group+1, 0
			} else {
				role++
			}
			// The reference dashed, the first measured solid, the next dotted.
			col, dashes = plotutil.Color(group), plotutil.Dashes([]int{1, 0, 2, 3, 4}[min(role, 4)])
		}
		if c.bars {
			v := make(plotter.Values, len(t.x))
			for j, y := range t.values[i] {
				v[j] = y
				if math.IsNaN(y) {
					v[j] = 0 // not measured: no bar
				}
			}
			b, err := plotter.NewBarChart(v, barWidth)
			if err != nil {
				return err
			}
			b.Color, b.LineStyle.Width = col, 0
			b.Offset = barWidth * vg.Length(float64(i)-float64(len(t.series)-1)/2)
			p.Add(b)
			legend.Add(name, b)
			continue
		}
		var pts plotter.XYs
		for j, y := range t.values[i] {
			if math.IsNaN(y) {
				continue
			}
			x := float64(j)
			if xs != nil {
				x = xs[j]
			}
			pts = append(pts, plotter.XY{X: x, Y: y})
		}
		if len(pts) == 0 {
			continue
		}
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color, l.Dashes, s.Color, s.Shape = col, dashes, col, plotutil.Shape(i)
		p.Add(l, s)
		legend.Add(name, l, s)
	}
	if !c.logY {
		p.Y.Min = 0 // figures compared with each other: the axis starts at zero
	}
	// The legend to the right of the plot, never over a figure.
	canvas := vgsvg.New(width, height)
	dc := draw.New(canvas)
	dc.FillPolygon(color.White, []vg.Point{{X: 0, Y: 0}, {X: width, Y: 0}, {X: width, Y: height}, {X: 0, Y: height}}) // readable on a dark page too
	legend.YOffs = -p.Title.TextStyle.FontExtents().Height * 2
	r := legend.Rectangle(dc)
	p.Draw(draw.Crop(dc, 0, -(r.Max.X-r.Min.X)-5*vg.Millimeter, 0, 0))
	legend.Draw(dc)
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := canvas.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// thousandsTicks labels a Ticker's ticks as BENCHMARKS.md writes numbers (1,000,000).
type thousandsTicks struct{ plot.Ticker }

func (t thousandsTicks) Ticks(min, max float64) []plot.Tick {
	ticks := t.Ticker.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = thousands(ticks[i].Value)
		}
	}
	return ticks
}

// thousands formats an x value as BENCHMARKS.md does (1,000,000).
func thousands(v float64) string {
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if v != math.Trunc(v) || math.Abs(v) < 10000 {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
