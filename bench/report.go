//go:build linux

package bench

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Report holds every figure of a run, per target and per repetition.
type Report struct {
	Targets []string
	Reps    int
	Env     []string // machine and tool versions
	Notes   []string // skipped parts and why
	Elapsed time.Duration
	figs    []*Figure
}

// Figure is one row: a measured quantity for every target.
type Figure struct {
	Key    string
	Label  string
	Unit   string
	Higher bool                 // higher is better
	Vals   map[string][]float64 // target -> value per repetition (NaN = not measured)
}

func newReport(ts []*target, reps int) *Report {
	r := &Report{Reps: reps}
	for _, t := range ts {
		r.Targets = append(r.Targets, t.name)
	}
	return r
}

// put records v for target t in repetition rep; the first put of a key fixes
// the row's place, label and unit.
func (r *Report) put(key, label, unit string, higher bool, rep int, t string, v float64) {
	var f *Figure
	for _, g := range r.figs {
		if g.Key == key {
			f = g
		}
	}
	if f == nil {
		f = &Figure{Key: key, Label: label, Unit: unit, Higher: higher, Vals: map[string][]float64{}}
		r.figs = append(r.figs, f)
	}
	vs := f.Vals[t]
	for len(vs) < r.Reps {
		vs = append(vs, math.NaN())
	}
	vs[rep] = v
	f.Vals[t] = vs
}

// Figures returns the rows in the order they were measured.
func (r *Report) Figures() []*Figure { return r.figs }

// Value returns the median over repetitions of figure key for target t.
func (r *Report) Value(key, t string) (float64, bool) {
	for _, f := range r.figs {
		if f.Key == key {
			return median(f.Vals[t])
		}
	}
	return 0, false
}

// median of the measured (non-NaN) values.
func median(vs []float64) (float64, bool) {
	var ok []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return 0, false
	}
	slices.Sort(ok)
	if len(ok)%2 == 1 {
		return ok[len(ok)/2], true
	}
	return (ok[len(ok)/2-1] + ok[len(ok)/2]) / 2, true
}

// ratios returns t/ref per repetition, where both were measured.
func (f *Figure) ratios(t, ref string) []float64 {
	var out []float64
	a, b := f.Vals[t], f.Vals[ref]
	for i := range min(len(a), len(b)) {
		if !math.IsNaN(a[i]) && !math.IsNaN(b[i]) && b[i] != 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// cell is the median, with the range over repetitions when there are several.
func cell(vs []float64) string {
	m, ok := median(vs)
	if !ok {
		return "—"
	}
	s := num(m)
	var ok2 []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			ok2 = append(ok2, v)
		}
	}
	if len(ok2) > 1 {
		s += fmt.Sprintf(" (%s–%s)", num(slices.Min(ok2)), num(slices.Max(ok2)))
	}
	return s
}

// String renders three tables: the values, the ratios to direct and the ratios
// to HAProxy nbthread 1 (when it ran), as Markdown pipe tables.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# l4lb benchmark, %s\n\n", time.Now().Format(time.RFC3339))
	for _, e := range r.Env {
		fmt.Fprintf(&b, "    %s\n", e)
	}
	if r.Reps > 1 {
		fmt.Fprintf(&b, "\n%d repetitions: each cell is the median, with the range over repetitions in parentheses.\n", r.Reps)
	}
	b.WriteString("\n## Values\n\n")
	rows := [][]string{append([]string{"figure", "unit", "better"}, r.Targets...)}
	for _, f := range r.figs {
		better := "lower"
		if f.Higher {
			better = "higher"
		}
		row := []string{f.Label, f.Unit, better}
		for _, t := range r.Targets {
			row = append(row, cell(f.Vals[t]))
		}
		rows = append(rows, row)
	}
	table(&b, rows)
	for _, ref := range []string{"direct", "haproxy-1t"} {
		if !slices.Contains(r.Targets, ref) {
			continue
		}
		fmt.Fprintf(&b, "\n## Ratio to %s (same run; each repetition's ratio, then the median)\n\n", ref)
		var cols []string
		for _, t := range r.Targets {
			if t != ref {
				cols = append(cols, t)
			}
		}
		rows := [][]string{append([]string{"figure"}, cols...)}
		for _, f := range r.figs {
			if _, ok := median(f.Vals[ref]); !ok {
				continue
			}
			row := []string{f.Label}
			for _, t := range cols {
				row = append(row, cell(f.ratios(t, ref)))
			}
			rows = append(rows, row)
		}
		if len(rows) == 1 {
			fmt.Fprintf(&b, "(no figure from %s in this run: see the notes)\n", ref)
			continue
		}
		table(&b, rows)
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	if r.Elapsed > 0 {
		fmt.Fprintf(&b, "\nmeasured in %s\n", r.Elapsed.Round(time.Second))
	}
	return b.String()
}

func table(b *strings.Builder, rows [][]string) {
	w := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			w[i] = max(w[i], len([]rune(c)))
		}
	}
	line := func(row []string) {
		b.WriteString("|")
		for i, c := range row {
			fmt.Fprintf(b, " %s%s |", c, strings.Repeat(" ", w[i]-len([]rune(c))))
		}
		b.WriteString("\n")
	}
	line(rows[0])
	sep := make([]string, len(w))
	for i := range w {
		sep[i] = strings.Repeat("-", w[i])
	}
	line(sep)
	for _, row := range rows[1:] {
		line(row)
	}
}

// environment describes the machine and the versions of everything measured.
func environment(bin string, tools map[string]bool) []string {
	first := func(argv ...string) string {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return "?"
		}
		s, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return s
	}
	var env []string
	host, _ := os.Hostname()
	kern, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	env = append(env, fmt.Sprintf("host %s, Linux %s, %d CPUs (%s), bench built with %s",
		host, strings.TrimSpace(string(kern)), runtime.NumCPU(), cpu, runtime.Version()))
	env = append(env, "l4lb: "+first(bin, "version"))
	for _, v := range [][]string{
		{"haproxy", "-v"}, {"nginx", "-v"}, {"redis-server", "--version"}, {"iperf3", "--version"},
	} {
		if tools[v[0]] {
			env = append(env, v[0]+": "+first(v...))
		}
	}
	return env
}
