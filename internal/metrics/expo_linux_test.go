package metrics

import (
	"bytes"
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
)

// Series added in any order come out one family at a time under one HELP
// and TYPE; label values and HELP that need escaping, invalid UTF-8 and
// counters above 2^53 survive a Prometheus parser unchanged (invalid UTF-8
// as U+FFFD).
func TestExpositionParses(t *testing.T) {
	a := newFamily("t_a_total", counter, "Counts \\ things\nover lines.", "name", "reason")
	b := newFamily("t_b", gauge, "A gauge.", "name")
	c := newFamily("t_empty", gauge, "Never set: not listed.")
	d := newFamily("t_plain", gauge, "No labels.")
	e := newFamily("t_float", gauge, "Special values.", "v")

	x := newExposition()
	x.u64(a, 1<<53+1, `quo"te`, "x")
	x.f64(b, 2.5, "back\\slash")
	x.u64(a, 7, "new\nline", "y")
	x.f64(b, 0, "bad\xffutf8")
	x.f64(d, 1e21)
	x.f64(e, posInf, "inf")
	x.f64(e, -posInf, "-inf")

	var out bytes.Buffer
	if err := x.writeTo(&out, []*family{a, b, c, d, e}); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatalf("%v\n%s", err, out.Bytes())
	}
	if _, ok := fams["t_empty"]; ok || strings.Contains(out.String(), "t_empty") {
		t.Errorf("a family without series is listed:\n%s", out.Bytes())
	}
	if n := strings.Count(out.String(), "# TYPE t_a_total counter\n"); n != 1 {
		t.Errorf("TYPE of t_a_total %d times, want once:\n%s", n, out.Bytes())
	}
	if got := fams["t_a_total"].GetHelp(); got != "Counts \\ things\nover lines." {
		t.Errorf("HELP %q", got)
	}
	type series struct {
		labels string
		value  float64
	}
	got := map[string][]series{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			v := m.GetGauge().GetValue()
			if m.Counter != nil {
				v = m.GetCounter().GetValue()
			}
			got[name] = append(got[name], series{strings.Join(ls, ","), v})
		}
	}
	want := map[string][]series{
		"t_a_total": {{"name=quo\"te,reason=x", 1<<53 + 1}, {"name=new\nline,reason=y", 7}},
		"t_b":       {{"name=back\\slash", 2.5}, {"name=bad\uFFFDutf8", 0}},
		"t_plain":   {{"", 1e21}},
		"t_float":   {{"v=inf", posInf}, {"v=-inf", -posInf}},
	}
	for name, ws := range want {
		if len(got[name]) != len(ws) {
			t.Errorf("%s: %v, want %v", name, got[name], ws)
			continue
		}
		for i, w := range ws {
			if got[name][i] != w {
				t.Errorf("%s[%d]: %+v, want %+v", name, i, got[name][i], w)
			}
		}
	}
	// Exact in the text, where a float64 would have printed 9007199254740992.
	if !strings.Contains(out.String(), `t_a_total{name="quo\"te",reason="x"} 9007199254740993`+"\n") {
		t.Errorf("counter not exact:\n%s", out.Bytes())
	}
}

var posInf = math.Inf(1)

// A family left out of the list writeTo is given is still written, after
// the listed ones, by name: a slip in the list must not hide a metric.
func TestExpositionUnlisted(t *testing.T) {
	a := newFamily("t_a", gauge, "a")
	z := newFamily("t_z", gauge, "z")
	m := newFamily("t_m", gauge, "m")
	x := newExposition()
	x.f64(z, 1)
	x.f64(m, 2)
	x.f64(a, 3)
	var out bytes.Buffer
	if err := x.writeTo(&out, []*family{z}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.SplitSeq(out.String(), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names = append(names, strings.Fields(name)[0])
		}
	}
	if got := strings.Join(names, " "); got != "t_z t_a t_m" {
		t.Errorf("families %q, want %q", got, "t_z t_a t_m")
	}
}

// The open-fd count agrees with a listing of /proc/self/fd, by both of its
// ways (the directory's size on Linux 6.2 and later, its entries counted
// before), and moves with fds opened.
func TestOpenFDs(t *testing.T) {
	list := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents) - 1 // ReadDir's own fd
	}
	for _, f := range []func() (int, error){openFDs, countFDs} {
		n0, err := f()
		if err != nil {
			t.Fatal(err)
		}
		if want := list(); n0 != want {
			t.Errorf("%d open fds, a listing says %d", n0, want)
		}
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		n1, err := f()
		unix.Close(fds[0])
		unix.Close(fds[1])
		if err != nil || n1 != n0+2 {
			t.Errorf("after a pipe: %d (%v), want %d", n1, err, n0+2)
		}
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if n, err := maxFDs(); err != nil || n != rl.Cur {
		t.Errorf("maxFDs %d (%v), want %d", n, err, rl.Cur)
	}
}

// A family given the wrong number of label values is a programming error,
// caught at once rather than written as a series Prometheus would reject.
func TestExpositionLabelCount(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a missing label value")
		}
	}()
	newExposition().f64(newFamily("t", gauge, "h", "a", "b"), 1, "only-a")
}

type emptySource struct{}

func (emptySource) Status() control.Status        { return control.Status{} }
func (emptySource) Listeners() []*proxy.Listener  { return nil }
func (emptySource) UDPListeners() []*udp.Listener { return nil }
func (emptySource) Reloads() uint64               { return 3 }
func (emptySource) ReloadFailures() uint64        { return 1 }

// The handler gzips for a scraper that asks, answers plain text to one
// that does not, and turns away a fifth scrape while four are running.
func TestHandler(t *testing.T) {
	h := NewHandler(emptySource{}, "v-test").(*handler)

	for _, c := range []struct {
		accept string
		gz     bool
	}{{"", false}, {"gzip", true}, {"deflate, gzip;q=0.5", true}, {"GZIP ; Q=0.001", true},
		{"gzip;q=0", false}, {"gzip; Q=0.000", false}, {"gzip;q=x", false}, {"identity", false}} {
		r := httptest.NewRequest("GET", "/metrics", nil)
		if c.accept != "" {
			r.Header.Set("Accept-Encoding", c.accept)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != contentType || w.Header().Get("Vary") != "Accept-Encoding" {
			t.Fatalf("Accept-Encoding %q: %d, header %v", c.accept, w.Code, w.Header())
		}
		body := w.Body.Bytes()
		if gz := w.Header().Get("Content-Encoding") == "gzip"; gz != c.gz {
			t.Fatalf("Accept-Encoding %q: gzip %v, want %v", c.accept, gz, c.gz)
		}
		if c.gz {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		p := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("Accept-Encoding %q: %v", c.accept, err)
		}
		for name, want := range map[string]float64{
			"l4lb_config_reloads_total":         3,
			"l4lb_config_reload_failures_total": 1,
			"l4lb_build_info":                   1,
		} {
			if f := fams[name]; f == nil || len(f.GetMetric()) != 1 ||
				f.GetMetric()[0].GetCounter().GetValue()+f.GetMetric()[0].GetGauge().GetValue() != want {
				t.Errorf("%s: %v, want one series of %v", name, f, want)
			}
		}
		for _, name := range []string{"go_goroutines", "process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total"} {
			if fams[name] == nil {
				t.Errorf("%s missing", name)
			}
		}
	}

	for range maxScrapes {
		h.sem <- struct{}{}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("scrape while %d run: %d, want 503", maxScrapes, w.Code)
	}
	for range maxScrapes {
		<-h.sem
	}
}
