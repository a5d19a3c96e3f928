//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// command runs a load generator to completion, bounded by the mode's command
// timeout, and returns its stdout.
func (r *runner) command(ctx context.Context, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.p.cmdTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s%s", strings.Join(argv, " "), err, out, stderr.Bytes())
	}
	return out, nil
}

// proxyOnly is v for a proxy and "not measured" for direct, whose row place
// must still be taken by the first target.
func proxyOnly(in *instance, v float64) float64 {
	if in.proc == nil {
		return math.NaN()
	}
	return v
}

// measured runs f and returns the CPU time the proxy's processes used meanwhile.
func measured(in *instance, f func() error) (time.Duration, error) {
	pids := in.pids()
	c0 := cpuOf(pids)
	err := f()
	return cpuOf(pids) - c0, err
}

type iperfTest struct {
	streams int
	reverse bool // -R: the server sends
}

func (it iperfTest) names() (key, label string) {
	dir, lab := "up", "client→server"
	if it.reverse {
		dir, lab = "down", "server→client (-R)"
	}
	s := "stream"
	if it.streams > 1 {
		s = "streams"
	}
	return fmt.Sprintf("%d-%s", it.streams, dir), fmt.Sprintf("%d %s, %s", it.streams, s, lab)
}

// bulk measures iperf3 throughput through the target, and the proxy's CPU
// seconds per GB moved.
func (r *runner) bulk(ctx context.Context, rep int, in *instance) error {
	host, port, _ := net.SplitHostPort(in.addr[svcIperf])
	for _, it := range r.p.iperfTests {
		argv := []string{"iperf3", "-c", host, "-p", port, "-t", strconv.Itoa(r.p.iperfSecs),
			"-P", strconv.Itoa(it.streams), "-J"}
		if it.reverse {
			argv = append(argv, "-R")
		}
		var out []byte
		cpu, err := measured(in, func() (err error) {
			out, err = r.command(ctx, argv...)
			return err
		})
		if err != nil {
			return err
		}
		bytes, bps, err := parseIperf(out)
		if err != nil {
			return err
		}
		key, label := it.names()
		r.rep.put("bulk-"+key, "bulk "+label, "Gbit/s", true, rep, in.t.name, bps/1e9)
		r.rep.put("cpugb-"+key, "proxy CPU per GB, "+label, "s/GB", false, rep, in.t.name,
			proxyOnly(in, cpu.Seconds()/(float64(bytes)/1e9)))
	}
	return nil
}

// parseIperf reads the bytes received and the receive rate from iperf3 -J.
func parseIperf(out []byte) (bytes int64, bps float64, err error) {
	var v struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes int64   `json:"bytes"`
				BPS   float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return 0, 0, fmt.Errorf("iperf3 -J output: %w", err)
	}
	if v.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", v.Error)
	}
	if v.End.SumReceived.Bytes == 0 {
		return 0, 0, errors.New("iperf3: no bytes received")
	}
	return v.End.SumReceived.Bytes, v.End.SumReceived.BPS, nil
}

// benchRow is one line of redis-benchmark --csv.
type benchRow struct {
	test          string
	rps, p50, p99 float64 // requests/s, ms, ms
}

// parseRedisCSV reads redis-benchmark --csv (redis 7: test, rps, avg, min,
// p50, p95, p99, max latency in ms).
func parseRedisCSV(out []byte) ([]benchRow, error) {
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark --csv: %w", err)
	}
	if len(recs) < 2 || len(recs[0]) < 7 || recs[0][4] != "p50_latency_ms" || recs[0][6] != "p99_latency_ms" {
		return nil, fmt.Errorf("redis-benchmark --csv: unexpected output %q", out)
	}
	var rows []benchRow
	for _, rec := range recs[1:] {
		var row benchRow
		var errs [3]error
		row.test = rec[0]
		row.rps, errs[0] = strconv.ParseFloat(rec[1], 64)
		row.p50, errs[1] = strconv.ParseFloat(rec[4], 64)
		row.p99, errs[2] = strconv.ParseFloat(rec[6], 64)
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("redis-benchmark --csv: %w", err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// redisBench runs one redis-benchmark test through the target and returns
// its row and the proxy's CPU meanwhile.
func (r *runner) redisBench(ctx context.Context, in *instance, test string, n, pipeline int, extra ...string) (benchRow, time.Duration, error) {
	host, port, _ := net.SplitHostPort(in.addr[svcRedis])
	argv := append([]string{"redis-benchmark", "-h", host, "-p", port, "-c", "50", "-n", strconv.Itoa(n),
		"-P", strconv.Itoa(pipeline), "-t", test, "--csv"}, extra...)
	var out []byte
	cpu, err := measured(in, func() (err error) {
		out, err = r.command(ctx, argv...)
		return err
	})
	if err != nil {
		return benchRow{}, 0, err
	}
	rows, err := parseRedisCSV(out)
	if err != nil {
		return benchRow{}, 0, err
	}
	return rows[0], cpu, nil
}

var redisLabel = map[string]string{"get": "GET", "set": "SET", "ping_mbulk": "PING"}

// redis measures small requests (GET, SET, PING with 50 clients, pipeline 1
// and 16), new connections per second, and syscalls per request.
func (r *runner) redis(ctx context.Context, rep int, in *instance) error {
	name := in.t.name
	for _, pl := range []int{1, 16} {
		n := r.p.redisN1
		if pl > 1 {
			n = r.p.redisN16
		}
		for _, test := range r.p.redisTests {
			row, cpu, err := r.redisBench(ctx, in, test, n, pl)
			if err != nil {
				return err
			}
			k := fmt.Sprintf("redis-%s-p%d", test, pl)
			l := fmt.Sprintf("redis %s pipeline %d", redisLabel[test], pl)
			r.rep.put(k+"-rps", l+", requests/s", "req/s", true, rep, name, row.rps)
			r.rep.put(k+"-p50", l+", p50", "ms", false, rep, name, row.p50)
			r.rep.put(k+"-p99", l+", p99", "ms", false, rep, name, row.p99)
			// redis-benchmark counts pipelined commands as requests.
			r.rep.put(k+"-cpu", l+", proxy CPU per request", "µs", false, rep, name,
				proxyOnly(in, float64(cpu.Microseconds())/float64(n)))
		}
	}
	// -k 0: a new connection per request.
	row, cpu, err := r.redisBench(ctx, in, "ping_mbulk", r.p.connN, 1, "-k", "0")
	if err != nil {
		return err
	}
	r.rep.put("conn-rate", "new connections/s (PING, keepalive off)", "conn/s", true, rep, name, row.rps)
	r.rep.put("conn-cpu", "proxy CPU per new connection", "µs", false, rep, name,
		proxyOnly(in, float64(cpu.Microseconds())/float64(r.p.connN)))
	if !r.tools["perf"] {
		return nil
	}
	if in.proc == nil {
		// Keeps the row's place in the table.
		r.rep.put("redis-get-p1-sys", "redis GET pipeline 1, proxy syscalls per request", "calls", false, rep, name, math.NaN())
	} else {
		n, err := r.syscalls(ctx, in)
		if err != nil {
			r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("syscalls on %s: %v", name, err))
		} else {
			r.rep.put("redis-get-p1-sys", "redis GET pipeline 1, proxy syscalls per request", "calls", false, rep, name,
				float64(n)/float64(r.p.sysN))
		}
	}
	return nil
}

// syscalls counts the proxy's system calls (perf's raw_syscalls:sys_enter
// tracepoint, which costs far less than strace) during a GET pipeline 1 run of
// sysN requests.
func (r *runner) syscalls(ctx context.Context, in *instance) (int64, error) {
	var ps []string
	for _, p := range in.pids() {
		ps = append(ps, strconv.Itoa(p))
	}
	c := exec.Command("perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", strings.Join(ps, ","))
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		return 0, err
	}
	time.Sleep(300 * time.Millisecond) // perf attaches to every thread
	_, _, err := r.redisBench(ctx, in, "get", r.p.sysN, 1)
	_ = c.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.Process.Kill()
		<-done
	}
	if err != nil {
		return 0, err
	}
	return parsePerfCount(stderr.String())
}

// parsePerfCount reads the count from perf stat -x , output ("1234,,event,...").
func parsePerfCount(s string) (int64, error) {
	for _, l := range strings.Split(s, "\n") {
		f := strings.Split(l, ",")
		if len(f) >= 3 && f[2] == "raw_syscalls:sys_enter" {
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("perf stat: %q", l)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("perf stat: no count in %q", s)
}
