package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type harness struct {
	f    *fake
	srv  *Server
	sock string
	hc   *http.Client
	c    *Client
}

// socketDir returns a fresh directory with a short path (sun_path holds 108
// bytes; t.TempDir paths with long test names do not always fit).
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "l4lbctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// start runs a server over a fresh fake until the test ends.
func start(t *testing.T, cfg ServerConfig, log zerolog.Logger) *harness {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(socketDir(t), "control.sock")
	}
	h := &harness{f: newFake(), sock: cfg.Socket}
	h.srv = New(cfg, h.f, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.Run(ctx) }()
	select {
	case <-h.srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	h.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", h.sock)
		},
	}}
	h.c = NewClient(h.sock)
	t.Cleanup(func() {
		h.c.Close()
		h.hc.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// do sends a raw request and returns the status and the decoded body.
func (h *harness) do(t *testing.T, method, path string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://l4lb"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s %s: answer is not a JSON object: %q", method, path, b)
		}
	}
	return resp.StatusCode, m
}

// curl runs the real curl against the socket.
func (h *harness) curl(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	args := []string{"-sS", "--max-time", "5", "--unix-socket", h.sock, "-X", method, "-o", "-", "-w", "\n%{http_code}"}
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "--data-binary", body)
	}
	out, err := exec.Command("curl", append(args, "http://l4lb"+path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s %s: %v: %s", method, path, err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil {
		t.Fatalf("curl %s %s: no status in %q", method, path, out)
	}
	return code, s[:max(i, 0)]
}

func needCurl(t *testing.T) {
	testbackend.Tool(t, "curl")
}

func TestCurlEndToEnd(t *testing.T) {
	needCurl(t)
	h := start(t, ServerConfig{}, zerolog.Nop())
	steps := []struct {
		method, path, body string
		code               int
		want               string // a substring of the answer
	}{
		{"GET", "/v1/upstreams", "", 200, `"name": "redis"`},
		{"GET", "/v1/upstreams/redis", "", 200, `"id": "r2"`},
		{"GET", "/v1/upstreams/nope", "", 404, `upstream \"nope\": not found`},
		{"PUT", "/v1/upstreams/mysql", `{"pools":[{"name":"main","priority":0,"hosts":[{"address":"10.1.0.1:3306","weight":5}]}]}`, 201, `"source": "api"`},
		{"PUT", "/v1/upstreams/mysql", `{"name":"mysql","method":"least_conn","pools":[{"name":"main","hosts":[{"address":"10.1.0.2:3306","weight":5}]}]}`, 200, `"10.1.0.2:3306"`},
		{"DELETE", "/v1/upstreams/mysql", "", 204, ""},
		{"DELETE", "/v1/upstreams/mysql", "", 404, "not found"},
		{"POST", "/v1/upstreams/redis/pools", `{"name":"backup","priority":5,"method":"least_conn"}`, 201, `"name": "backup"`},
		{"POST", "/v1/upstreams/redis/pools", `{"name":"backup","priority":5}`, 409, "already exists"},
		{"PATCH", "/v1/upstreams/redis/pools/backup", `{"priority":7}`, 200, `"priority": 7`},
		{"PATCH", "/v1/upstreams/redis/pools/backup", `{"method":"fastest"}`, 400, `not implemented`},
		{"DELETE", "/v1/upstreams/redis/pools/backup", "", 200, `"name": "redis"`},
		{"POST", "/v1/upstreams/redis/pools/primary/hosts", `{"address":"10.0.0.3:6379","weight":5}`, 201, `"10.0.0.3:6379"`},
		{"POST", "/v1/upstreams/redis/pools/primary/hosts", `{"address":"10.0.0.3:6379"}`, 409, "already exists"},
		{"PATCH", "/v1/upstreams/redis/pools/primary/hosts/10.0.0.3:6379", `{"weight":7}`, 200, `"weight": 7`},
		{"POST", "/v1/upstreams/redis/pools/primary/hosts/r2/down", "", 200, `"manual_down"`},
		{"POST", "/v1/upstreams/redis/pools/primary/hosts/r2/up", "{}", 200, `"up"`},
		{"POST", "/v1/upstreams/redis/pools/primary/hosts/r2/drain", "", 200, `"draining"`},
		{"POST", "/v1/upstreams/redis/pools/dr/hosts/unix:%2Frun%2Fr.sock/down", "", 200, `"manual_down"`},
		{"DELETE", "/v1/upstreams/redis/pools/primary/hosts/10.0.0.3:6379", "", 202, `"draining"`},
		{"GET", "/v1/status", "", 200, `"drain_remaining": "`},
		{"GET", "/v1/status", "", 200, `"bytes_from_host": 5242880`},
		{"POST", "/v1/reload", "", 200, `"reloaded"`},
		{"POST", "/v1/reset", "", 200, `"reset"`},
		{"GET", "/v1/upstreams/redis", "", 200, `"state": "up"`},
		{"GET", "/v1/nope", "", 404, "no such resource"},
		{"POST", "/v1/status", "", 405, "allowed: GET"},
	}
	for _, s := range steps {
		code, out := h.curl(t, s.method, s.path, s.body)
		if code != s.code || !strings.Contains(out, s.want) {
			t.Errorf("%s %s %s: got %d %s\nwant %d and %q", s.method, s.path, s.body, code, out, s.code, s.want)
		}
	}
	// After reset nothing of the edits is left.
	if got, want := h.f.hash(), newFake().hash(); got != want {
		t.Errorf("state after reset differs from the initial one")
	}
}

func TestCurlEvents(t *testing.T) {
	needCurl(t)
	h := start(t, ServerConfig{}, zerolog.Nop())
	h.f.HostAction("redis", "primary", "r2", ActionDown)
	h.f.HostAction("redis", "primary", "r2", ActionUp)
	// curl ends at --max-time; it must have printed both replayed lines.
	out, _ := exec.Command("curl", "-sS", "-N", "--max-time", "1", "--unix-socket", h.sock, "http://l4lb/v1/events?since=0").Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"kind":"host_manual_down"`) || !strings.Contains(lines[1], `"seq":2`) {
		t.Errorf("events: got %q", out)
	}
}

func TestEventsStream(t *testing.T) {
	h := start(t, ServerConfig{ReadTimeout: 200 * time.Millisecond}, zerolog.Nop())
	h.f.feed.Publish(eventsEvent("host_down"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- h.c.Events(ctx, 0, func(e eventT) error { got <- e.Kind; return nil })
	}()
	if k := <-got; k != "host_down" {
		t.Fatalf("replay: got %q", k)
	}
	// The stream must outlive the read timeout.
	time.Sleep(500 * time.Millisecond)
	h.f.feed.Publish(eventsEvent("host_up"))
	select {
	case k := <-got:
		if k != "host_up" {
			t.Fatalf("live: got %q", k)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("live event not received")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Events after cancel: %v", err)
	}
}

func TestEventsEndWithServer(t *testing.T) {
	f := newFake()
	sock := filepath.Join(socketDir(t), "c.sock")
	srv := New(ServerConfig{Socket: sock}, f, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	c := NewClient(sock)
	defer c.Close()
	// One kept event, replayed first: once it has arrived, the stream is
	// established and the server is in its live loop.
	f.feed.Publish(eventsEvent("host_down"))
	got := make(chan string, 1)
	streaming := make(chan error, 1)
	go func() {
		streaming <- c.Events(context.Background(), 0, func(e eventT) error {
			select {
			case got <- e.Kind:
			default:
			}
			return nil
		})
	}()
	select {
	case k := <-got:
		if k != "host_down" {
			t.Fatalf("replayed %q, want host_down", k)
		}
	case err := <-streaming:
		t.Fatalf("stream ended before its first event: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the replayed event did not arrive")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return while an events stream was open")
	}
	if err := <-streaming; err == nil {
		t.Fatal("client stream did not see the end")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
}

func TestEventsBadQuery(t *testing.T) {
	h := start(t, ServerConfig{}, zerolog.Nop())
	for _, q := range []string{"since=-1", "since=x", "foo=1", "since=1&since=2"} {
		if code, m := h.do(t, "GET", "/v1/events?"+q, nil); code != 400 || m["error"] == "" {
			t.Errorf("?%s: got %d %v", q, code, m)
		}
	}
}

// TestMalformed sends bad requests; each must get the right 4xx with a
// message, and change nothing. The API here is the fake, so this covers
// what the server itself refuses (decoding, syntax, the mapping of errors
// to codes); internal/server's TestMalformedRealServer sends the same and
// more to the real API, hashing its live state and saved edits.
func TestMalformed(t *testing.T) {
	h := start(t, ServerConfig{MaxBody: 64 << 10}, zerolog.Nop())
	const hostp = "/v1/upstreams/redis/pools/primary/hosts"
	deep := strings.Repeat("[", 60000) // under the cap, over encoding/json's depth limit
	cases := []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"truncated", "POST", hostp, `{"address":"10.0.0.9:1","wei`, 400, "invalid JSON"},
		{"empty", "POST", hostp, ``, 400, "empty"},
		{"not an object", "POST", hostp, `[1,2]`, 400, "JSON object"},
		{"wrong type", "POST", hostp, `{"address":"10.0.0.9:1","weight":"5"}`, 400, "weight: must be an integer, not string"},
		{"float weight", "POST", hostp, `{"address":"10.0.0.9:1","weight":1.5}`, 400, "weight"},
		{"unknown field", "POST", hostp, `{"address":"10.0.0.9:1","wieght":5}`, 400, "wieght: unknown field"},
		{"trailing data", "POST", hostp, `{"address":"10.0.0.9:1"} {"address":"10.0.0.8:1"}`, 400, "after the JSON object"},
		{"negative weight", "POST", hostp, `{"address":"10.0.0.9:1","weight":-1}`, 400, "weight: -1 is out of range"},
		{"huge weight", "POST", hostp, `{"address":"10.0.0.9:1","weight":99999999999}`, 400, "weight: 99999999999 is out of range"},
		{"overflow weight", "POST", hostp, `{"address":"10.0.0.9:1","weight":1e400}`, 400, "weight"},
		{"no address", "POST", hostp, `{"weight":1}`, 400, "address: required"},
		{"bad address", "POST", hostp, `{"address":"10.0.0.9"}`, 400, "address"},
		{"bad port", "POST", hostp, `{"address":"10.0.0.9:99999"}`, 400, "port"},
		{"nul in id", "POST", hostp, `{"address":"10.0.0.9:1","id":"a\u0000b"}`, 400, "id:"},
		{"raw nul", "POST", hostp, "{\"address\":\"10.0.0.9:1\x00\"}", 400, "invalid JSON"},
		{"invalid utf8", "POST", hostp, "{\"address\":\"10.0.0.9:1\",\"id\":\"\xff\xfe\"}", 400, "UTF-8"},
		{"deep nesting", "POST", hostp, deep, 400, "invalid JSON"},
		{"unknown upstream", "POST", "/v1/upstreams/nope/pools/primary/hosts", `{"address":"10.0.0.9:1"}`, 404, `upstream "nope": not found`},
		{"unknown pool", "POST", "/v1/upstreams/redis/pools/nope/hosts", `{"address":"10.0.0.9:1"}`, 404, `pool "nope"`},
		{"unknown host", "PATCH", hostp + "/nope", `{"weight":1}`, 404, `host "nope"`},
		{"unknown host action", "POST", hostp + "/nope/down", ``, 404, `host "nope"`},
		{"duplicate host", "POST", hostp, `{"address":"10.0.0.1:6379"}`, 409, "already exists"},
		{"duplicate id", "POST", hostp, `{"address":"10.0.0.9:1","id":"r2"}`, 409, "already exists"},
		{"patch no weight", "PATCH", hostp + "/r2", `{}`, 400, "weight: required"},
		{"patch null weight", "PATCH", hostp + "/r2", `{"weight":null}`, 400, "weight: required"},
		{"pool nothing", "PATCH", "/v1/upstreams/redis/pools/primary", `{}`, 400, "nothing to change"},
		{"pool bad method", "PATCH", "/v1/upstreams/redis/pools/primary", `{"method":"rr"}`, 400, `method: unknown method "rr"`},
		{"pool bad priority", "POST", "/v1/upstreams/redis/pools", `{"name":"x","priority":-3}`, 400, "priority: -3"},
		{"pool bad name", "POST", "/v1/upstreams/redis/pools", `{"name":"a b"}`, 400, "name:"},
		{"pool duplicate", "POST", "/v1/upstreams/redis/pools", `{"name":"dr","priority":1}`, 409, "already exists"},
		{"put name mismatch", "PUT", "/v1/upstreams/redis", `{"name":"other","pools":[{"name":"p"}]}`, 400, "name: \"other\" does not match"},
		{"put no pools", "PUT", "/v1/upstreams/redis", `{"pools":[]}`, 400, "pools: an upstream needs at least one pool"},
		{"put dup pool", "PUT", "/v1/upstreams/redis", `{"pools":[{"name":"a"},{"name":"a"}]}`, 400, "pools[1].name: duplicate pool"},
		{"put dup host", "PUT", "/v1/upstreams/redis", `{"pools":[{"name":"a","hosts":[{"address":"1.2.3.4:5"}]},{"name":"b","hosts":[{"address":"1.2.3.4:5"}]}]}`, 400, "pools[1].hosts[0].id: duplicate host"},
		{"put bad nested weight", "PUT", "/v1/upstreams/redis", `{"pools":[{"name":"a","hosts":[{"address":"1.2.3.4:5","weight":-2}]}]}`, 400, "pools[0].hosts[0].weight"},
		{"put bad state", "PUT", "/v1/upstreams/redis", `{"pools":[{"name":"a","hosts":[{"address":"1.2.3.4:5","state":"bogus"}]}]}`, 400, "state"},
		{"put bad tries", "PUT", "/v1/upstreams/redis", `{"tries":1000,"pools":[{"name":"a"}]}`, 400, "tries"},
		{"body on action", "POST", hostp + "/r2/down", `{"force":true}`, 400, "force: unknown field"},
		{"query", "GET", "/v1/status?x=1", ``, 400, "unexpected query"},
		{"unknown resource", "POST", "/v1/frobnicate", `{}`, 404, "no such resource"},
		{"wrong method", "DELETE", "/v1/status", ``, 405, "not allowed"},
		{"control char in path", "GET", "/v1/upstreams/a%01b", ``, 400, "control characters"},
		{"too large", "POST", hostp, `{"address":"10.0.0.9:1","id":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "larger than 65536 bytes"},
		{"reload refused", "POST", "/v1/reload", `{"x":1}`, 400, "x: unknown field"},
	}
	before := h.f.hash()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, m := h.do(t, c.method, c.path, []byte(c.body))
			msg, _ := m["error"].(string)
			if code != c.code || !strings.Contains(msg, c.want) {
				t.Errorf("got %d %q, want %d and %q", code, msg, c.code, c.want)
			}
			if after := h.f.hash(); after != before {
				t.Errorf("state changed")
			}
		})
	}
}

func TestReloadRefused(t *testing.T) {
	h := start(t, ServerConfig{}, zerolog.Nop())
	h.f.reloadErr = errors.Join(errors.New("config.toml:12: upstream.redis.pool[0].hosts[1].weight: -1 is out of range"), ErrInvalid)
	code, m := h.do(t, "POST", "/v1/reload", nil)
	if code != 422 || !strings.Contains(m["error"].(string), "config.toml:12") {
		t.Errorf("got %d %v", code, m)
	}
}

func TestFieldInError(t *testing.T) {
	h := start(t, ServerConfig{}, zerolog.Nop())
	_, err := h.c.AddHost(context.Background(), "redis", "primary", HostSpec{Address: "10.0.0.9:1", Weight: -5})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 400 || se.Field != "weight" {
		t.Fatalf("got %#v", err)
	}
}

// TestOversize sends 10 MiB; the server must answer 413 having read little
// more than the cap.
func TestOversize(t *testing.T) {
	const maxBody = 64 << 10
	var read atomic.Int64
	f := newFake()
	sock := filepath.Join(socketDir(t), "c.sock")
	srv := New(ServerConfig{Socket: sock, MaxBody: maxBody}, f, zerolog.Nop())
	srv.countRead = func(n int) { read.Add(int64(n)) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Ready()

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 10 << 20
	hdr := "POST /v1/upstreams/redis/pools/primary/hosts HTTP/1.1\r\nHost: l4lb\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(size) + "\r\n\r\n"
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // writes fail once the server closes: that is the point
		defer wg.Done()
		c.Write([]byte(hdr))
		c.Write(bytes.Repeat([]byte("a"), size))
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
	c.Close()
	wg.Wait()
	// Body bytes read: cap+1 through MaxBytesReader, plus the header and one
	// bufio read-ahead (4 KiB) on the wire.
	if n := read.Load(); n > maxBody+1+int64(len(hdr))+4096 {
		t.Errorf("server read %d bytes for a %d-byte cap", n, maxBody)
	}
	t.Logf("server read %d bytes of a %d-byte request (cap %d)", read.Load(), size, maxBody)
}

// TestIdleClientDropped: a client that sends one byte and idles is closed at
// the read deadline, while others are served.
func TestIdleClientDropped(t *testing.T) {
	const rt = 300 * time.Millisecond
	h := start(t, ServerConfig{ReadTimeout: rt}, zerolog.Nop())
	var idle []net.Conn
	for range 20 {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("G"))
		idle = append(idle, c)
	}
	for range 5 {
		if code, _ := h.do(t, "GET", "/v1/status", nil); code != 200 {
			t.Fatalf("status: %d", code)
		}
	}
	t0 := time.Now()
	for _, c := range idle {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c) // until the server closes
	}
	if d := time.Since(t0); d > 3*rt {
		t.Errorf("idle clients closed after %v, read timeout %v", d, rt)
	}
}

func TestConcurrentClients(t *testing.T) {
	h := start(t, ServerConfig{}, zerolog.Nop())
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := NewClient(h.sock)
			defer c.Close()
			ctx := context.Background()
			id := "h" + strconv.Itoa(i)
			if _, err := c.AddHost(ctx, "redis", "primary", HostSpec{ID: id, Address: "10.9.0.1:" + strconv.Itoa(1000+i), Weight: 1}); err != nil {
				errs <- err
				return
			}
			if _, err := c.Status(ctx); err != nil {
				errs <- err
				return
			}
			if _, err := c.PatchHost(ctx, "redis", "primary", id, HostPatch{Weight: new(i)}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	u, _ := h.f.Upstream("redis")
	if n := len(u.Pools[0].Hosts); n != 102 {
		t.Errorf("%d hosts, want 102", n)
	}
}

func TestClientUnreachable(t *testing.T) {
	c := NewClient(filepath.Join(socketDir(t), "none.sock"))
	defer c.Close()
	_, err := c.Status(context.Background())
	var se *StatusError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("got %v, want a transport error", err)
	}
}

// TestAudit: an applied edit is logged at info with the peer's uid and pid
// and the request; a refused one at warn with the error.
func TestAudit(t *testing.T) {
	var buf syncBuffer
	h := start(t, ServerConfig{}, zerolog.New(&buf))
	h.do(t, "POST", "/v1/upstreams/redis/pools/primary/hosts/r2/down", nil)
	h.do(t, "PATCH", "/v1/upstreams/redis/pools/primary/hosts/r2", []byte(`{"weight":3}`))
	h.do(t, "PATCH", "/v1/upstreams/redis/pools/primary/hosts/r2", []byte(`{"weight":-3}`))
	h.do(t, "GET", "/v1/status", nil)
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		json.Unmarshal([]byte(l), &m)
		if m["message"] == "control: edit" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 3 {
		t.Fatalf("%d audit lines, want 3:\n%s", len(lines), buf.String())
	}
	pid := float64(os.Getpid())
	if l := lines[0]; l["op"] != "host_down" || l["host"] != "r2" || l["uid"] != float64(os.Getuid()) || l["pid"] != pid || l["level"] != "info" {
		t.Errorf("down: %v", l)
	}
	if l := lines[1]; l["op"] != "patch_host" || l["request"].(map[string]any)["weight"] != 3.0 {
		t.Errorf("patch: %v", l)
	}
	if l := lines[2]; l["level"] != "warn" || !strings.Contains(l["error"].(string), "out of range") || l["status"] != 400.0 {
		t.Errorf("refused: %v", l)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
