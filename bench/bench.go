//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Options select what a run measures and for how long. The zero value is the
// quick mode with every target, except that Bin must be set.
type Options struct {
	Bin     string // the l4lb binary (required)
	Full    bool   // full mode: 3 repetitions, longer runs, 10 000 idle connections
	Smoke   bool   // smoke mode: direct and l4lb only, a few seconds, never installs
	Install bool   // install missing Debian packages with apt-get (not in smoke mode)
	// Only, when set, runs only the scenarios whose name starts with one of
	// these words ("bulk", "redis", "udp", "idle"); nil runs them all.
	Only []string
	// UDPTime, when set, is how long the udp scenario runs instead of the
	// mode's default (smoke 1 s, quick 3 s, full 8 s).
	UDPTime time.Duration
	Log     io.Writer // progress lines; nil = discard
}

// params are the sizes of one mode. Every load loop is bounded by these counts
// and by the durations.
type params struct {
	reps       int
	iperfSecs  int
	iperfTests []iperfTest
	redisN1    int // requests per redis-benchmark run at pipeline 1
	redisN16   int // at pipeline 16
	redisTests []string
	connN      int // connections for the new-connection test
	sysN       int // requests counted for syscalls per request
	udpDur     time.Duration
	udpClients int
	idle       int // idle connections held
	idleSettle time.Duration
	cmdTimeout time.Duration // bound on any one client command
}

func paramsFor(o Options) params {
	all := []iperfTest{{1, false}, {1, true}, {8, false}, {8, true}}
	switch {
	case o.Smoke:
		return params{reps: 1, iperfSecs: 1, iperfTests: []iperfTest{{1, false}},
			redisN1: 20000, redisN16: 100000, redisTests: []string{"get"}, connN: 2000, sysN: 5000,
			udpDur: time.Second, udpClients: 8, idle: 200, idleSettle: 200 * time.Millisecond,
			cmdTimeout: 30 * time.Second}
	case o.Full:
		return params{reps: 3, iperfSecs: 10, iperfTests: all,
			redisN1: 300000, redisN16: 2000000, redisTests: []string{"get", "set", "ping_mbulk"},
			connN: 50000, sysN: 50000, udpDur: 8 * time.Second, udpClients: 8, idle: 10000,
			idleSettle: 2 * time.Second, cmdTimeout: 2 * time.Minute}
	default:
		return params{reps: 1, iperfSecs: 5, iperfTests: all,
			redisN1: 100000, redisN16: 1200000, redisTests: []string{"get", "set", "ping_mbulk"},
			connN: 20000, sysN: 20000, udpDur: 3 * time.Second, udpClients: 8, idle: 5000,
			idleSettle: time.Second, cmdTimeout: time.Minute}
	}
}

// runner holds the state of one run.
type runner struct {
	opt    Options
	p      params
	tmp    string
	seq    int
	be     backends
	procs  []*proc  // every process started, stopped in reverse order at the end
	nofile int      // the fd limit children get
	rep0   []string // notes from before the report exists
	udpOK  bool     // l4lb accepts protocol = "udp"
	udpWhy string   // why not
	tools  map[string]bool
	sink   *sink
	echo   *udpEcho
	rep    *Report
	log    io.Writer
}

func (r *runner) logf(format string, a ...any) {
	fmt.Fprintf(r.log, "bench: "+format+"\n", a...)
}

// Run measures every target on the same work and returns the report. It stops
// every process it started before returning, on error and on ctx's end too.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Bin == "" {
		return nil, errors.New("bench: Options.Bin (the l4lb binary) is required")
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	bin, err := filepath.Abs(o.Bin)
	if err != nil {
		return nil, err
	}
	o.Bin = bin
	r := &runner{opt: o, p: paramsFor(o), log: o.Log}
	if o.UDPTime > 0 {
		r.p.udpDur = o.UDPTime
	}
	if !o.Smoke {
		if err := ensureTools(o.Install, r.logf); err != nil {
			return nil, err
		}
	}
	r.tools = haveTools()
	r.tmp, err = os.MkdirTemp("", "l4lb-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(r.tmp)
	defer r.stopAll()

	r.nofile = raiseNofile(8*r.p.idle+4096, r.logf)
	if fit := (r.nofile - 4096) / 2; r.p.idle > fit {
		r.rep0 = append(r.rep0, fmt.Sprintf("idle connections lowered from %d to %d to fit the fd limit %d", r.p.idle, fit, r.nofile))
		r.p.idle = fit
	}
	targets := []*target{{name: "direct", kind: direct}, {name: "l4lb", kind: l4lb}}
	if !o.Smoke {
		targets = append(targets,
			&target{name: "haproxy-1t", kind: haproxy, threads: 1},
			&target{name: "haproxy-2t", kind: haproxy, threads: 2},
			&target{name: "nginx-1w", kind: nginx, threads: 1},
			&target{name: "nginx-2w", kind: nginx, threads: 2})
	}
	if o.Full {
		// l4lb with two engine loops beside its default (one per two
		// CPUs; docs/BEHAVIOUR.md, [engine] loops), as HAProxy and nginx
		// run with one and two threads.
		targets = slices.Insert(targets, 2, &target{name: "l4lb-2loops", kind: l4lb, threads: 2})
	}
	r.rep = newReport(targets, r.p.reps)
	r.rep.Notes = append(r.rep.Notes, r.rep0...)
	r.rep.Env = environment(o.Bin, r.tools)
	// Targets run one after another: load from elsewhere lands on some of
	// them and not others, and the ratios scatter. Say so up front.
	if busy := busyShare(time.Second); busy > 0.05 {
		msg := fmt.Sprintf("the machine was %.0f%% busy in the second before the run (other processes): figures will scatter", 100*busy)
		r.rep.Notes = append(r.rep.Notes, msg)
		r.logf("warning: %s", msg)
	}
	r.checkUDP()
	if !r.udpOK {
		r.rep.Notes = append(r.rep.Notes, "UDP on l4lb skipped: "+r.udpWhy)
		r.logf("UDP on l4lb skipped: %s", r.udpWhy)
	}
	if err := r.startBackends(); err != nil {
		return nil, err
	}
	start := time.Now()
	for rep := 0; rep < r.p.reps; rep++ {
		for _, sc := range r.scenarios() {
			if !r.selected(sc.name) {
				continue
			}
			if sc.skip != "" {
				if rep == 0 {
					r.rep.Notes = append(r.rep.Notes, sc.name+" skipped: "+sc.skip)
					r.logf("%s skipped: %s", sc.name, sc.skip)
				}
				continue
			}
			for _, t := range targets {
				if err := ctx.Err(); err != nil {
					return r.rep, err
				}
				r.logf("rep %d/%d %s on %s", rep+1, r.p.reps, sc.name, t.name)
				// A failure costs its cells, not the run: it is noted and
				// the next target goes on.
				in, err := r.start(ctx, t)
				if err == nil {
					err = sc.run(ctx, rep, in)
					in.stop()
				}
				if err != nil && ctx.Err() == nil {
					msg := fmt.Sprintf("%s on %s (rep %d) failed: %v", sc.name, t.name, rep+1, err)
					r.rep.Notes = append(r.rep.Notes, msg)
					r.logf("%s", msg)
				}
			}
		}
	}
	r.rep.Elapsed = time.Since(start)
	return r.rep, nil
}

type scenario struct {
	name string
	skip string // non-empty: why it does not run
	run  func(ctx context.Context, rep int, in *instance) error
}

func (r *runner) scenarios() []scenario {
	need := func(cmds ...string) string {
		var miss []string
		for _, c := range cmds {
			if !r.tools[c] {
				miss = append(miss, c)
			}
		}
		if len(miss) > 0 {
			return "missing " + strings.Join(miss, ", ")
		}
		return ""
	}
	return []scenario{
		{"bulk (iperf3)", need("iperf3"), r.bulk},
		{"redis (redis-benchmark)", need("redis-server", "redis-benchmark"), r.redis},
		{"udp echo", "", r.udpEcho},
		{"idle connections", "", r.idle},
	}
}

// selected reports whether Options.Only lets the scenario called name run.
func (r *runner) selected(name string) bool {
	if len(r.opt.Only) == 0 {
		return true
	}
	for _, w := range r.opt.Only {
		if w != "" && strings.HasPrefix(name, w) {
			return true
		}
	}
	return false
}

// stopAll stops every process the run started, by PID, newest first, then the
// in-process backends.
func (r *runner) stopAll() {
	for i := len(r.procs) - 1; i >= 0; i-- {
		r.procs[i].stop()
	}
	if r.sink != nil {
		r.sink.Close()
	}
	if r.echo != nil {
		r.echo.Close()
	}
}

// startBackends starts iperf3 and redis-server (when present) and the
// in-process sink and UDP echo. They live for the whole run.
func (r *runner) startBackends() error {
	var err error
	if r.sink, err = startSink(); err != nil {
		return err
	}
	if r.echo, err = startUDPEcho(); err != nil {
		return err
	}
	r.be[svcSink], r.be[svcUDP] = r.sink.addr(), r.echo.addr()
	for _, s := range []service{svcIperf, svcRedis} {
		port, err := freePort("tcp")
		if err != nil {
			return err
		}
		r.be[s] = fmt.Sprintf("127.0.0.1:%d", port)
		var argv []string
		switch {
		case s == svcIperf && r.tools["iperf3"]:
			argv = []string{"iperf3", "-s", "-B", "127.0.0.1", "-p", fmt.Sprint(port)}
		case s == svcRedis && r.tools["redis-server"]:
			argv = []string{"redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
				"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"}
		default:
			continue
		}
		p, err := startProc(r.tmp, svcName[s]+"-backend", argv...)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, p)
		deadline := time.Now().Add(10 * time.Second)
		for !bound(r.be[s], false) {
			if p.exited() || time.Now().After(deadline) {
				return fmt.Errorf("%s did not listen on %s:\n%s", argv[0], r.be[s], p.tail())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// checkUDP asks the l4lb binary whether it accepts a UDP listener.
func (r *runner) checkUDP() {
	conf := filepath.Join(r.tmp, "udp-check.toml")
	body := "[log]\nlevel = \"warn\"\n" + l4lbListener("udp", "127.0.0.1:1", "127.0.0.1:2", true)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		r.udpWhy = err.Error()
		return
	}
	out, err := exec.Command(r.opt.Bin, "check", "-c", conf).CombinedOutput()
	if err != nil {
		msg := strings.ReplaceAll(strings.TrimSpace(string(out)), conf, "CONFIG")
		r.udpWhy = "`l4lb check` rejects protocol = \"udp\": " + msg
		return
	}
	r.udpOK = true
}

// raiseNofile raises this process's fd limit (soft and hard) towards n and
// returns the hard limit it ends with: the suite holds both ends of every idle
// connection, and its children inherit the limit (Go forgets its start-up
// soft limit once Setrlimit is called). Raising the hard limit needs
// CAP_SYS_RESOURCE, which containers often lack.
func raiseNofile(n int, logf func(string, ...any)) int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	if l.Cur >= uint64(n) {
		return int(l.Max)
	}
	want := syscall.Rlimit{Cur: uint64(n), Max: max(l.Max, uint64(n))}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		logf("cannot raise the fd limit to %d (%v); keeping the hard limit %d", n, err, l.Max)
		want = syscall.Rlimit{Cur: l.Max, Max: l.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return int(l.Cur)
		}
	}
	return int(want.Max)
}
