//go:build linux

package bench

import (
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the smoke mode (direct and l4lb, a few seconds) when the
// tools are installed, so the suite cannot rot unnoticed: every figure l4lb
// can produce today must come out positive.
func TestSmoke(t *testing.T) {
	for _, tool := range []string{"go", "iperf3", "redis-server", "redis-benchmark", "prlimit"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("smoke needs %s: %v", tool, err)
		}
	}
	bin := filepath.Join(t.TempDir(), "l4lb")
	build := exec.Command("go", "build", "-o", bin, "../cmd/l4lb")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build l4lb: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Bin: bin, Smoke: true, Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.String())
	want := map[string][]string{
		"bulk-1-up":         {"direct", "l4lb"},
		"cpugb-1-up":        {"l4lb"},
		"redis-get-p1-rps":  {"direct", "l4lb"},
		"redis-get-p1-p99":  {"direct", "l4lb"},
		"redis-get-p1-cpu":  {"l4lb"},
		"redis-get-p16-rps": {"direct", "l4lb"},
		"conn-rate":         {"direct", "l4lb"},
		"conn-cpu":          {"l4lb"},
		"udp-rate":          {"direct", "l4lb"},
		"udp-p99":           {"direct", "l4lb"},
		"udp-cpu":           {"l4lb"},
		"rss-rest":          {"l4lb"},
		"rss-idle":          {"l4lb"},
		"fds-idle":          {"l4lb"},
	}
	for key, targets := range want {
		for _, tg := range targets {
			v, ok := rep.Value(key, tg)
			if !ok || v <= 0 || math.IsInf(v, 0) {
				t.Errorf("%s on %s = %v, %v; want a positive figure", key, tg, v, ok)
			}
		}
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(string(b))
	return len(b), nil
}

func TestParseRedisCSV(t *testing.T) {
	out := []byte(`"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"GET","117647.05","0.233","0.072","0.223","0.319","0.455","3.327"
`)
	rows, err := parseRedisCSV(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := rows[0]; got.test != "GET" || got.rps != 117647.05 || got.p50 != 0.223 || got.p99 != 0.455 {
		t.Errorf("got %+v", got)
	}
	// Redis 6's --csv has no percentiles: the suite must say so, not read junk.
	if _, err := parseRedisCSV([]byte("\"GET\",\"117647.05\"\n")); err == nil {
		t.Error("redis 6 csv accepted")
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as /proc allows.
	line := "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 5 1000 200"
	f, err := statFieldsOf([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseCPU(f)
	if err != nil || d != 4*time.Second {
		t.Errorf("cpu = %v, %v; want 4s", d, err)
	}
	if rss := parseVmRSS([]byte("Name:\tx\nVmRSS:\t  1234 kB\n")); rss != 1234*1024 {
		t.Errorf("rss = %d", rss)
	}
	if n, err := parsePerfCount("\n123456,,raw_syscalls:sys_enter,1000,100.00,,\n"); err != nil || n != 123456 {
		t.Errorf("perf count = %d, %v", n, err)
	}
}

// TestHAProxyFitsNofile: HAProxy starts only if its fd limit covers 2 fds a
// connection and 2 a splice pipe. Under a 20 000 hard limit the full mode
// holds 7 952 idle connections; HAProxy's default maxpipes (maxconn/4)
// would ask for 22 396 fds and it would refuse to start, losing every
// HAProxy cell of the run.
func TestHAProxyFitsNofile(t *testing.T) {
	for _, c := range []struct{ idle, nofile, pipes int }{
		{7952, 20000, 998},  // full mode, 20 000 hard limit: capped
		{5000, 20000, 1500}, // quick mode: HAProxy's default, maxconn/4
		{10000, 84096, 2750},
	} {
		conf := haproxyConfig(&instance{}, backends{}, 1, c.idle, c.nofile)
		var maxconn, maxpipes int
		for _, line := range strings.Split(conf, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "maxconn" && maxconn == 0 {
				maxconn, _ = strconv.Atoi(f[1])
			}
			if len(f) == 2 && f[0] == "maxpipes" {
				maxpipes, _ = strconv.Atoi(f[1])
			}
		}
		if maxpipes != c.pipes {
			t.Errorf("idle %d, nofile %d: maxpipes %d, want %d", c.idle, c.nofile, maxpipes, c.pipes)
		}
		if need := 2*maxconn + 2*maxpipes; need > c.nofile {
			t.Errorf("idle %d: HAProxy needs %d fds, the limit is %d", c.idle, need, c.nofile)
		}
	}
}

// TestReportWithoutReference: when HAProxy produced no figure (it failed to
// start), the ratio section says so instead of printing an empty table.
func TestReportWithoutReference(t *testing.T) {
	r := newReport([]*target{{name: "direct"}, {name: "l4lb"}, {name: "haproxy-1t"}}, 1)
	r.put("x", "some figure", "req/s", true, 0, "direct", 100)
	r.put("x", "some figure", "req/s", true, 0, "l4lb", 50)
	out := r.String()
	if !strings.Contains(out, "## Ratio to direct") || !strings.Contains(out, "0.500") {
		t.Errorf("no ratio to direct:\n%s", out)
	}
	_, hap, ok := strings.Cut(out, "## Ratio to haproxy-1t")
	if !ok || !strings.Contains(hap, "(no figure from haproxy-1t in this run") || strings.Contains(hap, "| figure") {
		t.Errorf("ratio to haproxy-1t without figures:\n%s", hap)
	}
}
