package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/proxyproto"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
)

// dialFrom connects to addr from the loopback address src (127.0.0.x).
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// served reports whether c gets the backend's tag line (true) or is closed
// (false); it fails the test if it takes more than 2s either way.
func served(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && strings.TrimSpace(line) != "" {
		return true
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("client left hanging: neither served nor closed within 2s")
	}
	return false
}

func TestAccessLists(t *testing.T) {
	b := testbackend.New(t, testbackend.Tagger("b"))
	s := defaults(upstream(t, []string{b.Addr()}))
	s.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/29")}
	s.Deny = []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}
	r := start(t, s)
	for _, c := range []struct {
		src  string
		want bool
	}{{"127.0.0.1", true}, {"127.0.0.2", true}, {"127.0.0.3", false}, {"127.0.0.9", false}} {
		start := time.Now()
		if got := served(t, dialFrom(t, c.src, r.addr)); got != c.want {
			t.Errorf("client %s: served=%v, want %v", c.src, got, c.want)
		}
		if d := time.Since(start); !c.want && d > 100*time.Millisecond {
			t.Errorf("client %s closed after %v, want < 100ms", c.src, d)
		}
	}
	if st := r.l.Stats(); st.Denied != 2 {
		t.Errorf("denied = %d, want 2", st.Denied)
	}
}

func TestListenerLimit(t *testing.T) {
	b := testbackend.New(t, testbackend.Tagger("b"))
	s := defaults(upstream(t, []string{b.Addr()}))
	s.MaxConnections = 2
	r := start(t, s)
	c1, c2 := dialFrom(t, "127.0.0.1", r.addr), dialFrom(t, "127.0.0.1", r.addr)
	if !served(t, c1) || !served(t, c2) {
		t.Fatal("connections under the limit not served")
	}
	start := time.Now()
	if served(t, dialFrom(t, "127.0.0.1", r.addr)) {
		t.Fatal("third connection served over max_connections = 2")
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("over-limit client closed after %v", d)
	}
	if st := r.l.Stats(); st.OverListenerLimit != 1 {
		t.Errorf("over-limit count %d", st.OverListenerLimit)
	}
	c1.Close()
	// Once c1's handler is done, a slot is free again.
	for i := 0; ; i++ {
		if served(t, dialFrom(t, "127.0.0.1", r.addr)) {
			break
		}
		if i == 100 {
			t.Fatal("slot never freed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientLimit(t *testing.T) {
	b := testbackend.New(t, testbackend.Tagger("b"))
	s := defaults(upstream(t, []string{b.Addr()}))
	s.MaxPerClient = 2
	r := start(t, s)
	for i := 0; i < 2; i++ {
		if !served(t, dialFrom(t, "127.0.0.1", r.addr)) {
			t.Fatal("under the per-client limit, not served")
		}
	}
	start := time.Now()
	if served(t, dialFrom(t, "127.0.0.1", r.addr)) {
		t.Fatal("third connection from one client served")
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("over-limit client closed after %v, want < 100ms", d)
	}
	if !served(t, dialFrom(t, "127.0.0.2", r.addr)) {
		t.Fatal("another client was refused")
	}
	if st := r.l.Stats(); st.OverClientLimit != 1 {
		t.Errorf("over-client-limit count %d", st.OverClientLimit)
	}
}

// TestHostLimit: a host at its max_connections is skipped like a down one;
// reaching the limit is counted and logged, once per full spell.
func TestHostLimit(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	u := upstream(t, []string{a.Addr(), b.Addr()})
	u.Pools()[0].Hosts[0].SetMaxConns(1)
	r, logs := startLogged(t, defaults(u))
	// The first connection takes a's only slot: wait until a greets it, so
	// the proxy has picked a before the next connection is made.
	held := dialFrom(t, "127.0.0.1", r.addr)
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "a\n" {
		t.Fatalf("first connection: %q, %v", line, err)
	}
	for i := 0; i < 4; i++ {
		if got := tag(t, r.addr); got != "b" {
			t.Fatalf("connection %d reached %q while a is full", i, got)
		}
	}
	if st := r.l.Stats(); st.HostFull != 1 {
		t.Errorf("host-full count %d, want 1 (a filled once)", st.HostFull)
	}
	lines := logs.lines("host full: skipped until a connection to it closes")
	if len(lines) != 1 || lines[0]["host"] != a.Addr() || lines[0]["pool"] != "p0" || lines[0]["level"] != "warn" ||
		!strings.Contains(fmt.Sprint(lines[0]["reason"]), "1 connections open") {
		t.Errorf("host-full log lines: %v", lines)
	}
	// a frees up, fills again: counted again, and the log line of the
	// second spell, within the same second, is left out and counted.
	firstLine := time.Now()
	held.Close()
	waitFor(t, func() bool { return u.Pools()[0].Hosts[0].Stats().Active == 0 })
	// Round robin: a's turn may come after b's.
	for i := 0; ; i++ {
		c := dialFrom(t, "127.0.0.1", r.addr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if tagOf(t, c) == "a" {
			break
		}
		if i == 3 {
			t.Fatal("a never picked again after its connection closed")
		}
	}
	if st := r.l.Stats(); st.HostFull != 2 {
		t.Errorf("host-full count %d after a second spell, want 2", st.HostFull)
	}
	n := len(logs.lines("host full: skipped until a connection to it closes"))
	if n != 1 && time.Since(firstLine) < 900*time.Millisecond {
		t.Errorf("%d host-full lines within a second, want 1 (rate-limited)", n)
	}
}

// tagOf reads the tag line a Tagger backend greets c with.
func tagOf(t *testing.T, c net.Conn) string {
	t.Helper()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading tag: %v", err)
	}
	return strings.TrimSpace(line)
}

// logCapture is a zerolog writer the tests can search.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *logCapture) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *logCapture) lines(msg string) []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(w.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func startLogged(t *testing.T, s *Settings) (*running, *logCapture) {
	t.Helper()
	w := &logCapture{}
	l, err := Listen("test", "tcp", "127.0.0.1:0", s, zerolog.New(w))
	if err != nil {
		t.Fatal(err)
	}
	r := runListenerForTest(t, l)
	return r, w
}

func runListenerForTest(t *testing.T, l *Listener) *running {
	ctx, cancel := contextWithCancel()
	r := &running{l: l, addr: l.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- l.Run(ctx) }()
	t.Cleanup(func() { r.shutdown(t) })
	return r
}

// headerBackend reads a PROXY header and then echoes; it reports the header.
func headerBackend(t *testing.T, got chan<- proxyproto.Header) *testbackend.Server {
	return testbackend.New(t, func(c *net.TCPConn) {
		h, rest, err := proxyproto.Read(c)
		if err != nil {
			c.Write([]byte("ERR " + err.Error()))
			return
		}
		got <- h
		c.Write(rest)
		io.Copy(c, c)
	})
}

// TestSendProxyProtocol: the backend gets a v1 or v2 header naming the
// client before any client byte, and the bytes after it still go by splice.
func TestSendProxyProtocol(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			got := make(chan proxyproto.Header, 1)
			b := headerBackend(t, got)
			s := defaults(upstream(t, []string{b.Addr()}))
			s.SendProxy = v
			r, logs := startLogged(t, s)
			c := dialFrom(t, "127.0.0.5", r.addr)
			payload := bytes.Repeat([]byte("p"), 1<<20)
			go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			back, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(back, payload) {
				t.Fatalf("echo through PROXY %d: %d bytes, %v", v, len(back), err)
			}
			h := <-got
			if h.Version != v || h.Src.Addr() != netip.MustParseAddr("127.0.0.5") ||
				h.Src.Port() != uint16(c.LocalAddr().(*net.TCPAddr).Port) || h.Dst.String() != r.addr {
				t.Fatalf("header %+v, want src %v dst %v", h, c.LocalAddr(), r.addr)
			}
			waitFor(t, func() bool { return len(logs.lines("connection closed")) == 1 })
			if line := logs.lines("connection closed")[0]; line["spliced"] != true {
				t.Fatalf("bytes after the header were not spliced: %v", line)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAcceptProxyProtocol: a header from a trusted front balancer names the
// client for ACLs, logs and the header sent on; bytes that came with it are
// forwarded first; untrusted peers and malformed headers are closed.
func TestAcceptProxyProtocol(t *testing.T) {
	got := make(chan proxyproto.Header, 4)
	b := headerBackend(t, got)
	s := defaults(upstream(t, []string{b.Addr()}))
	s.AcceptProxy = true
	s.Trusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	s.ProxyTimeout = 300 * time.Millisecond
	s.SendProxy = 1
	s.Deny = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	r, logs := startLogged(t, s)

	// Header and first bytes in one write, as a front balancer sends them.
	c := dialFrom(t, "127.0.0.1", r.addr)
	client := netip.MustParseAddrPort("203.0.113.7:5555")
	front := netip.MustParseAddrPort("192.0.2.1:6379")
	c.Write(append(proxyproto.Append(nil, 2, client, front), "hello"...))
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	if h := <-got; h.Src != client || h.Dst != front {
		t.Fatalf("header sent on: %+v, want %v -> %v", h, client, front)
	}
	// Then bulk: the client conn was unwrapped after the header, so the
	// bytes go by splice(2) (a wrapper would turn it off).
	payload := bytes.Repeat([]byte("s"), 1<<20)
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	if back, err := io.ReadAll(c); err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("1 MiB after the header: %d bytes back, %v", len(back), err)
	}
	c.Close()
	waitFor(t, func() bool { return len(logs.lines("connection closed")) == 1 })
	line := logs.lines("connection closed")[0]
	if line["client"] != client.String() || line["via"] != "127.0.0.1:"+strconv.Itoa(c.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("log names client %v via %v", line["client"], line["via"])
	}
	if want := float64(5 + len(payload)); line["spliced"] != true || line["bytes_up"] != want || line["bytes_down"] != want {
		t.Fatalf("after an accepted header: spliced %v, bytes up %v down %v; want spliced over %v each way",
			line["spliced"], line["bytes_up"], line["bytes_down"], want)
	}

	cases := []struct {
		name, src string
		send      []byte
	}{
		{"denied client named by the header", "127.0.0.1", proxyproto.Append(nil, 1, netip.MustParseAddrPort("198.51.100.9:1"), front)},
		{"untrusted peer", "127.0.0.2", proxyproto.Append(nil, 1, client, front)},
		{"garbage", "127.0.0.1", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"no header before the timeout", "127.0.0.1", nil},
	}
	for _, tc := range cases {
		c := dialFrom(t, tc.src, r.addr)
		c.Write(tc.send)
		if served(t, c) {
			t.Errorf("%s: served", tc.name)
		}
	}
	st := r.l.Stats()
	if st.Denied != 1 || st.Untrusted != 1 || st.BadProxyHeader != 2 {
		t.Errorf("counts: %+v", st)
	}
}

// TestProxyProtocolRealConsumer: HAProxy with accept-proxy, behind l4lb
// sending v2, sees the real client address (it answers with %[src]).
func TestProxyProtocolRealConsumer(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("haproxy not installed (make test installs it)")
		}
		t.Skip("haproxy not installed; `make test` installs it")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	haddr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, []byte(`global
  log stdout format raw local0
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend f
  bind `+haddr+` accept-proxy
  http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]\n"
`), 0o644)
	cmd := exec.Command(bin, "-db", "-f", cfg)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	s := defaults(upstream(t, []string{haddr}))
	s.SendProxy = 2
	r := start(t, s)
	var body string
	for i := 0; i < 100; i++ { // until haproxy is listening
		c := dialFrom(t, "127.0.0.6", r.addr)
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		resp, _ := io.ReadAll(c)
		if i := bytes.Index(resp, []byte("\r\n\r\n")); i >= 0 && bytes.HasPrefix(resp, []byte("HTTP/1.")) {
			body = strings.TrimSpace(string(resp[i+4:]))
			if want := c.LocalAddr().String(); body != want {
				t.Fatalf("haproxy saw client %q, want %q", body, want)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no answer from haproxy through l4lb; haproxy said:\n%s", out.String())
}

// TestHashSticky: with method hash, a client IP keeps its host across
// connections (whatever its source port), and different clients spread.
func TestHashSticky(t *testing.T) {
	var hosts []*pool.Host
	for _, name := range []string{"a", "b", "c"} {
		b := testbackend.New(t, testbackend.Tagger(name))
		hosts = append(hosts, pool.NewHost(name, "tcp", b.Addr(), 1))
	}
	p, err := pool.NewPool("p", 0, pool.MethodHash, hosts)
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, defaults(pool.NewUpstream("u", []*pool.Pool{p}, pool.AllDownReject)))
	seen := map[string]bool{}
	for i := 1; i <= 20; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		var first string
		for j := 0; j < 3; j++ {
			c := dialFrom(t, src, r.addr)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			if j == 0 {
				first = line
			} else if line != first {
				t.Fatalf("client %s went to %q then %q", src, first, line)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 clients all on %v", seen)
	}
}

// TestHashUsesProxyHeaderClient: behind a front balancer every connection
// comes from the same peer; with accept_proxy_protocol the hash is of the
// client the header names. Each header client lands on the host the pool
// picks for its own address, and several clients spread although the peer
// is one.
func TestHashUsesProxyHeaderClient(t *testing.T) {
	var hosts []*pool.Host
	for _, name := range []string{"a", "b", "c"} {
		b := testbackend.New(t, testbackend.Tagger(name))
		hosts = append(hosts, pool.NewHost(name, "tcp", b.Addr(), 1))
	}
	p, err := pool.NewPool("p", 0, pool.MethodHash, hosts)
	if err != nil {
		t.Fatal(err)
	}
	s := defaults(pool.NewUpstream("u", []*pool.Pool{p}, pool.AllDownReject))
	s.AcceptProxy = true
	s.Trusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	r := start(t, s)
	front := netip.MustParseAddrPort("192.0.2.1:6379")
	seen := map[string]bool{}
	for i := 1; i <= 20; i++ {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), uint16(40000+i))
		want := p.Pick(pool.HashKey(client, false), nil).ID
		for j := 0; j < 2; j++ { // and again, from another source port of the front
			c := dialFrom(t, "127.0.0.1", r.addr)
			c.Write(proxyproto.Append(nil, 1+j, client, front))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if got := tagOf(t, c); got != want {
				t.Fatalf("header client %v (v%d): host %q, want %q (the hash of the header's address)", client, 1+j, got, want)
			}
			c.Close()
		}
		seen[want] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 header clients all on %v", seen)
	}
}

// TestSourceAddress: connects to hosts leave from source_address.
func TestSourceAddress(t *testing.T) {
	from := make(chan string, 1)
	b := testbackend.New(t, func(c *net.TCPConn) {
		from <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Write([]byte("ok\n"))
	})
	s := defaults(upstream(t, []string{b.Addr()}))
	s.SourceIP = netip.MustParseAddr("127.0.0.7")
	r := start(t, s)
	if got := tag(t, r.addr); got != "ok" {
		t.Fatalf("got %q", got)
	}
	if ip := <-from; ip != "127.0.0.7" {
		t.Fatalf("backend saw the connect from %s, want 127.0.0.7", ip)
	}
}

// TestAllHostsFullReason: when every usable host is at its max_connections,
// a new client is closed at once and the line says so, rather than "no
// usable host in any pool", which would send an operator looking for down
// hosts.
func TestAllHostsFullReason(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	u := upstream(t, []string{a.Addr()})
	u.Pools()[0].Hosts[0].SetMaxConns(1)
	r, logs := startLogged(t, defaults(u))
	held := dialFrom(t, "127.0.0.1", r.addr)
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := tagOf(t, held); got != "a" {
		t.Fatalf("first connection reached %q", got)
	}
	expectPromptEOF(t, r.addr, time.Second)
	// The client is closed first, then the line is written.
	waitFor(t, func() bool { return len(logs.lines("client closed: no backend")) > 0 })
	lines := logs.lines("client closed: no backend")
	if len(lines) != 1 || !strings.Contains(fmt.Sprint(lines[0]["reason"]), "max_connections") {
		t.Errorf("no-backend lines %v, want one whose reason names max_connections", lines)
	}
}
