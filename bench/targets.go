//go:build linux

package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// kind is what sits between the load generator and the backend.
type kind int

const (
	direct kind = iota // no proxy: the client talks to the backend
	l4lb
	haproxy
	nginx
)

// target is one column of the result table.
type target struct {
	name    string
	kind    kind
	threads int // HAProxy nbthread, nginx worker_processes, or l4lb's [engine] loops (0 = its default)
}

// service is one kind of backend every target forwards to.
type service int

const (
	svcIperf service = iota // iperf3 -s
	svcRedis                // redis-server
	svcSink                 // in-process echo that holds idle connections
	svcUDP                  // in-process UDP echo
	nService
)

var svcName = [nService]string{"iperf", "redis", "sink", "udp"}

// backends holds the backend addresses of the run, one per service.
type backends [nService]string

// instance is a running target: the client dials addr[svc].
type instance struct {
	t    *target
	proc *proc // nil for direct
	addr [nService]string
	udp  bool // addr[svcUDP] is served
}

// pids returns the PIDs whose CPU, memory and fds count as the proxy's: the
// process and its children (nginx's workers). Direct has none.
func (in *instance) pids() []int {
	if in.proc == nil {
		return nil
	}
	return family(in.proc.pid())
}

// freePort returns a loopback port that was free a moment ago.
func freePort(network string) (int, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs target t in front of be, in a fresh process with its config in a
// fresh directory under r.tmp, and waits until its TCP listeners accept.
func (r *runner) start(ctx context.Context, t *target) (*instance, error) {
	in := &instance{t: t}
	if t.kind == direct {
		in.addr = r.be
		in.udp = true
		return in, nil
	}
	// A port freed by one freePort call can come back from the next (the
	// kernel may hand out the same ephemeral port again), and l4lb refuses a
	// config with two listeners on one address: draw again.
	used := map[int]bool{}
	for s := service(0); s < nService; s++ {
		net := "tcp"
		if s == svcUDP {
			net = "udp"
		}
		p, err := freePort(net)
		for try := 0; err == nil && used[p] && try < 10; try++ {
			p, err = freePort(net)
		}
		if err != nil {
			return nil, err
		}
		used[p] = true
		in.addr[s] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	r.seq++
	dir := filepath.Join(r.tmp, fmt.Sprintf("%s-%d", t.name, r.seq))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var argv []string
	var conf string
	switch t.kind {
	case l4lb:
		in.udp = r.udpOK
		conf = filepath.Join(dir, "l4lb.toml")
		argv = []string{r.opt.Bin, "run", "-c", conf}
		if err := os.WriteFile(conf, []byte(l4lbConfig(in, r.be, t.threads)), 0o644); err != nil {
			return nil, err
		}
	case haproxy:
		conf = filepath.Join(dir, "haproxy.cfg")
		argv = []string{"haproxy", "-db", "-f", conf}
		if err := os.WriteFile(conf, []byte(haproxyConfig(in, r.be, t.threads, r.p.idle, min(8*r.p.idle+4096, r.nofile))), 0o644); err != nil {
			return nil, err
		}
	case nginx:
		in.udp = true
		conf = filepath.Join(dir, "nginx.conf")
		argv = []string{"nginx", "-g", "daemon off;", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf}
		if err := os.WriteFile(conf, []byte(nginxConfig(in, r.be, t.threads, r.p.idle, min(8*r.p.idle+4096, r.nofile), dir)), 0o644); err != nil {
			return nil, err
		}
	}
	// prlimit execs the proxy in its own place, so the PID is the proxy's.
	// Room for 2 sockets and 2 splice pipes (4 fds) per idle connection.
	lim := min(8*r.p.idle+4096, r.nofile)
	argv = append([]string{"prlimit", fmt.Sprintf("--nofile=%d:%d", lim, lim), "--"}, argv...)
	p, err := startProc(dir, t.name, argv...)
	if err != nil {
		return nil, err
	}
	r.procs = append(r.procs, p)
	in.proc = p
	if err := waitReady(ctx, p, in.addr, in.udp); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s: %w\n%s", t.name, err, p.tail())
	}
	return in, nil
}

// stop stops the instance's process, if any.
func (in *instance) stop() {
	if in.proc != nil {
		in.proc.stop()
	}
}

// l4lbConfig: log level warn (no line per connection), every listener of
// in, and [engine] loops when loops is not 0.
func l4lbConfig(in *instance, be backends, loops int) string {
	var b strings.Builder
	b.WriteString("[log]\nlevel = \"warn\"\n")
	if loops > 0 {
		fmt.Fprintf(&b, "\n[engine]\nloops = %d\n", loops)
	}
	for s := service(0); s < nService; s++ {
		if s == svcUDP && !in.udp {
			continue
		}
		b.WriteString(l4lbListener(svcName[s], in.addr[s], be[s], s == svcUDP))
	}
	return b.String()
}

// l4lbListener is one listener and its upstream, named n.
func l4lbListener(n, listen, host string, udp bool) string {
	proto := ""
	if udp {
		proto = "protocol = \"udp\"\n"
	}
	return fmt.Sprintf(`
[[listener]]
name = %[1]q
listen = %[2]q
%[4]supstream = %[1]q
drain_timeout = "0s"

[upstream.%[1]s]
[[upstream.%[1]s.pool]]
name = "p"
priority = 0
hosts = [ { address = %[3]q } ]
`, n, listen, host, proto)
}

// haproxyConfig: mode tcp with splicing forced both ways (the reference
// figures are for forced splice), no logs, long timeouts so idle connections
// stay. maxconn counts client connections, each holding two sockets.
//
// HAProxy refuses to start unless nofile covers 2 fds per connection plus 2
// per splice pipe, and its pipes default to maxconn/4: at the full mode's
// idle count under a 20 000 hard limit that asks for 22 396. So maxpipes is
// that default capped to what nofile leaves (pipes are only held while
// bytes are in flight; with none left HAProxy copies through its buffers).
func haproxyConfig(in *instance, be backends, threads, idle, nofile int) string {
	maxconn := idle + 1000
	// At least 1: HAProxy reads "maxpipes 0" as unset, i.e. maxconn/4.
	maxpipes := max(min(maxconn/4, (nofile-2*maxconn-100)/2), 1)
	var b strings.Builder
	fmt.Fprintf(&b, `global
    nbthread %d
    maxconn %d
    maxpipes %d

defaults
    mode tcp
    maxconn %d
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option splice-request
    option splice-response
`, threads, maxconn, maxpipes, maxconn)
	for s := service(0); s < nService; s++ {
		if s == svcUDP {
			continue // HAProxy does not proxy UDP
		}
		fmt.Fprintf(&b, "\nlisten %s\n    bind %s\n    server s %s\n", svcName[s], in.addr[s], be[s])
	}
	return b.String()
}

// nginxConfig: the stream module from Debian's libnginx-mod-stream, no access
// log, long timeouts so idle connections stay; the UDP server keeps a session
// per client (proxy_responses unset) like l4lb does.
func nginxConfig(in *instance, be backends, workers, idle, nofile int, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes %d;
worker_rlimit_nofile %d;
pid %s;
error_log %s warn;
events { worker_connections %d; }
stream {
`, workers, nofile, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "error.log"), 2*idle+1000)
	for s := service(0); s < nService; s++ {
		if s == svcUDP {
			fmt.Fprintf(&b, "    server { listen %s udp; proxy_pass %s; proxy_timeout 30s; }\n", in.addr[s], be[s])
			continue
		}
		fmt.Fprintf(&b, "    server { listen %s; proxy_pass %s; proxy_timeout 1h; }\n", in.addr[s], be[s])
	}
	b.WriteString("}\n")
	return b.String()
}

// waitReady waits until every address in addr is bound (seen in /proc/net/tcp
// in LISTEN state, or in /proc/net/udp) and a connection through the sink
// listener works. It looks at the kernel's tables instead of dialing so that
// no stray connection reaches iperf3, which logs and may stall on one.
func waitReady(ctx context.Context, p *proc, addr [nService]string, udp bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		missing := ""
		for s := service(0); s < nService; s++ {
			if s == svcUDP && !udp {
				continue
			}
			if !bound(addr[s], s == svcUDP) {
				missing = addr[s]
				break
			}
		}
		if missing == "" {
			c, err := net.DialTimeout("tcp", addr[svcSink], time.Second)
			if err == nil {
				c.Close()
				return nil
			}
			missing = addr[svcSink] + ": " + err.Error()
		}
		if p != nil && p.exited() {
			return fmt.Errorf("exited before listening on %s", missing)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not listening on %s after 10s", missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bound reports whether 127.0.0.1:port is bound: for TCP a socket in LISTEN
// state (0A) in /proc/net/tcp, for UDP any socket in /proc/net/udp.
func bound(addr string, udp bool) bool {
	_, ps, _ := net.SplitHostPort(addr)
	var port int
	fmt.Sscanf(ps, "%d", &port)
	file, want := "/proc/net/tcp", fmt.Sprintf("0100007F:%04X", port)
	if udp {
		file = "/proc/net/udp"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 4 || f[1] != want {
			continue
		}
		if udp || f[3] == "0A" {
			return true
		}
	}
	return false
}
