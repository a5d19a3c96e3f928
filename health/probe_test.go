package health

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// probe runs one probe of c against addr with c's timeout.
func probe(t *testing.T, c Config, addr string) error {
	t.Helper()
	p, err := NewProber(c)
	if err != nil {
		t.Fatalf("NewProber(%+v): %v", c, err)
	}
	c = c.withDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	return p.Probe(ctx, Addr{Network: "tcp", Address: addr})
}

// want checks err against a reason: "" means no error, else err's text must
// contain it.
func want(t *testing.T, err error, reason string) {
	t.Helper()
	switch {
	case reason == "" && err != nil:
		t.Errorf("probe failed: %v, want ok", err)
	case reason != "" && err == nil:
		t.Errorf("probe passed, want %q", reason)
	case reason != "" && !strings.Contains(err.Error(), reason):
		t.Errorf("probe failed with %q, want %q", err, reason)
	}
}

// TestProbersBadPeers runs every prober against the three ways a peer can be
// gone: nothing listening, a full backlog, a server that never answers.
func TestProbersBadPeers(t *testing.T) {
	closed, hole, silent := closedPort(t), blackhole(t), silentServer(t)
	for _, typ := range []string{TypeTCP, TypeHTTP, TypeSendExpect, TypeRedis, TypeMySQL} {
		c := Config{Type: typ, Interval: time.Second, Timeout: 200 * time.Millisecond, Expect: "+PONG", Send: "PING\r\n"}
		t.Run(typ, func(t *testing.T) {
			want(t, probe(t, c, closed), "connection refused")
			start := time.Now()
			want(t, probe(t, c, hole), "timeout after 200ms")
			if d := time.Since(start); d > 400*time.Millisecond {
				t.Errorf("blackhole probe took %v, timeout 200ms", d)
			}
			if typ == TypeTCP {
				want(t, probe(t, c, silent), "") // connecting is all tcp asks
			} else {
				want(t, probe(t, c, silent), "timeout after 200ms")
			}
		})
	}
}

// openFDs counts this process's open fds (Linux), for leak checks.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc:", err)
	}
	return len(ents)
}

func TestHTTPProber(t *testing.T) {
	var status atomic.Int32
	var gotHost, gotHeader atomic.Value
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost.Store(r.Host)
		gotHeader.Store(r.Header.Get("X-Check") + " " + r.Method + " " + r.URL.Path)
		w.WriteHeader(int(status.Load()))
		io.WriteString(w, "all good here")
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	tlsSrv := httptest.NewTLSServer(h)
	defer tlsSrv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	tlsAddr := strings.TrimPrefix(tlsSrv.URL, "https://")

	base := Config{Type: TypeHTTP, Interval: time.Second, Timeout: 500 * time.Millisecond}
	for _, tc := range []struct {
		name   string
		status int
		c      func(Config) Config
		addr   string
		reason string
	}{
		{"200 ok", 200, nil, addr, ""},
		{"503 default masks", 503, nil, addr, "status 503"},
		{"404 default masks", 404, nil, addr, "status 404"},
		{"404 with 5xx only", 404, func(c Config) Config { c.FailStatus = []string{"5xx"}; return c }, addr, ""},
		{"403 exact", 403, func(c Config) Config { c.FailStatus = []string{"403"}; return c }, addr, "status 403"},
		{"302 is an answer", 302, nil, addr, ""},
		{"body ok", 200, func(c Config) Config { c.ExpectBody = "good"; return c }, addr, ""},
		{"body missing", 200, func(c Config) Config { c.ExpectBody = "healthy"; return c }, addr, `body does not contain "healthy"`},
		{"tls", 200, func(c Config) Config { c.TLS = true; return c }, tlsAddr, ""},
		{"tls 500", 500, func(c Config) Config { c.TLS = true; return c }, tlsAddr, "status 500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status.Store(int32(tc.status))
			c := base
			if tc.c != nil {
				c = tc.c(c)
			}
			want(t, probe(t, c, tc.addr), tc.reason)
		})
	}
	c := base
	c.Host, c.Method, c.Path, c.Headers = "redis.example", "HEAD", "/healthz", map[string]string{"X-Check": "yes"}
	status.Store(200)
	want(t, probe(t, c, addr), "")
	if gotHost.Load() != "redis.example" || gotHeader.Load() != "yes HEAD /healthz" {
		t.Errorf("server saw host %v, %v", gotHost.Load(), gotHeader.Load())
	}
}

// lineServer answers each connection with reply(first read).
func lineServer(t *testing.T, reply func(in string) string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 256)
			c.SetDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			io.WriteString(c, reply(string(buf[:n])))
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func TestSendExpect(t *testing.T) {
	addr := lineServer(t, func(in string) string {
		if in == "HELLO\n" {
			return "OK ready\n"
		}
		return "ERR what\n"
	})
	smtp := greeter(t, []byte("220 smtp ready\r\n"))
	for _, tc := range []struct {
		name, send, expect, addr, reason string
	}{
		{"match", "HELLO\n", "OK", addr, ""},
		{"mismatch", "BYE\n", "OK", addr, "expected OK, got ER"},
		{"short reply", "HELLO\n", "OK ready and more", addr, "expected OK ready and more, got OK ready"},
		{"no send, greeting", "", "220 ", smtp, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Type: TypeSendExpect, Interval: time.Second, Timeout: 500 * time.Millisecond, Send: tc.send, Expect: tc.expect}
			want(t, probe(t, c, tc.addr), tc.reason)
		})
	}
}

func TestRedisProber(t *testing.T) {
	plain, _ := startRedis(t)
	authed, _ := startRedis(t, "--requirepass", "s3cret")
	_, port, _ := net.SplitHostPort(plain)
	replica, _ := startRedis(t, "--replicaof", "127.0.0.1", port)
	base := Config{Type: TypeRedis, Interval: time.Second, Timeout: 500 * time.Millisecond}
	for _, tc := range []struct {
		name, addr, password, role, reason string
	}{
		{"ping", plain, "", "", ""},
		{"ping master", plain, "", "master", ""},
		{"auth", authed, "s3cret", "", ""},
		{"no auth", authed, "", "", "expected +PONG, got -NOAUTH"},
		{"wrong password", authed, "nope", "", "AUTH failed: -WRONGPASS"},
		{"replica is not master", replica, "", "master", "role is replica, want master"},
		{"replica wanted", replica, "", "replica", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.Password, c.Role = tc.password, tc.role
			want(t, probe(t, c, tc.addr), tc.reason)
		})
	}
	// The same PING as a plain send_expect, for servers speaking RESP.
	c := Config{Type: TypeSendExpect, Interval: time.Second, Timeout: 500 * time.Millisecond, Send: "PING\r\n", Expect: "+PONG\r\n"}
	want(t, probe(t, c, plain), "")
	want(t, probe(t, c, authed), "expected +PONG, got -NOAUTH")
}

func TestMySQLProber(t *testing.T) {
	addr, _ := startMariaDB(t)
	c := Config{Type: TypeMySQL, Interval: 2 * time.Second, Timeout: time.Second}
	want(t, probe(t, c, addr), "")
	// An error packet instead of a greeting, as a server sends to a host it
	// does not allow.
	deny := greeter(t, errPacket(1130, "Host '10.0.0.9' is not allowed to connect to this MariaDB server"))
	want(t, probe(t, c, deny), "not a MySQL greeting: error packet 1130: Host '10.0.0.9' is not allowed")
	// Another protocol entirely.
	redis := greeter(t, []byte("-ERR unknown\r\n"))
	want(t, probe(t, c, redis), "not a MySQL greeting")
}

// greeter writes b to each connection first thing, then closes it.
func greeter(t *testing.T, b []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write(b)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func errPacket(code int, msg string) []byte {
	payload := append([]byte{0xff, byte(code), byte(code >> 8)}, msg...)
	return append([]byte{byte(len(payload)), byte(len(payload) >> 8), 0, 0}, payload...)
}

// TestCheckAddress: a check with check_address probes there, not where
// traffic goes. The host's own port refuses; ":port" (the host's IP, another
// port) and "/path.sock" both reach live listeners and pass.
func TestCheckAddress(t *testing.T) {
	tcpL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpL.Close()
	sock := filepath.Join(t.TempDir(), "check.sock")
	unixL, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unixL.Close()
	refused := testbackend.Refuser(t)
	h := pool.NewHost("r", "tcp", refused, 1)
	_, port, _ := net.SplitHostPort(tcpL.Addr().String())

	for _, tc := range []struct{ checkAddress, want string }{
		{"", "connection refused"},
		{":" + port, ""},
		{tcpL.Addr().String(), ""},
		{sock, ""},
	} {
		c := Config{Type: TypeTCP, Interval: time.Second, Timeout: 500 * time.Millisecond, CheckAddress: tc.checkAddress}
		a, err := c.CheckAddr(h)
		if err != nil {
			t.Fatalf("CheckAddr(%q): %v", tc.checkAddress, err)
		}
		p, err := NewProber(c)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), c.Timeout)
		err = p.Probe(ctx, a)
		cancel()
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("check_address %q (probing %s): got %q, want %q", tc.checkAddress, a, got, tc.want)
		}
	}
	// ":port" has no meaning for a unix-socket host: an error, not a guess.
	if _, err := (Config{CheckAddress: ":" + port}).CheckAddr(pool.NewHost("u", "unix", sock, 1)); err == nil {
		t.Error("check_address :port on a unix host: no error")
	}
}
