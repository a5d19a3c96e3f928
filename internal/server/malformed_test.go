package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
)

const malformedConfig = `
[control]
state_dir = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "redis"

[upstream.redis]
[[upstream.redis.pool]]
name = "primary"
hosts = [ { address = "127.0.0.1:6379" }, { address = "127.0.0.2:6379", id = "r2" } ]

[[upstream.redis.pool]]
name = "dr"
priority = 10
hosts = [ { address = "127.0.0.3:6379", id = "d1" } ]
`

// stateHash is a digest of everything a refused request must leave alone:
// the upstreams as the control socket serves them, the live pools that
// selection uses (hosts, addresses, weights, states), the hosts' status
// and the store's, and the saved edits file, its bytes and its identity
// (inode, mtime), so that even a rewrite with the same bytes shows.
func stateHash(t *testing.T, hc *http.Client, s *Server, journal string) string {
	t.Helper()
	h := sha256.New()
	resp, err := hc.Get("http://l4lb/v1/upstreams")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /v1/upstreams: %d %s", resp.StatusCode, b)
	}
	h.Write(b)
	for _, u := range s.Upstreams() {
		lu := s.LiveUpstream(u.Name)
		if lu == nil {
			fmt.Fprintf(h, "\n%s: not live", u.Name)
			continue
		}
		for _, p := range lu.Pools() {
			fmt.Fprintf(h, "\n%s/%s %d %s:", u.Name, p.Name, p.Priority, p.Method)
			for _, x := range p.Hosts {
				fmt.Fprintf(h, " %s=%s/%s w%d %v", x.ID, x.Network, x.Address, x.Weight(), x.State())
			}
		}
	}
	st := s.Status()
	sb, _ := json.Marshal([]any{st.Hosts, st.Store})
	h.Write(sb)
	fi, err := os.Stat(journal)
	if err != nil {
		t.Fatalf("the saved edits: %v", err)
	}
	jb, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(h, "\n%d %d\n", fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime().UnixNano())
	h.Write(jb)
	return hex.EncodeToString(h.Sum(nil))
}

// TestMalformedRealServer sends the bad requests of control's TestMalformed,
// and more that only the real server can judge (ids that do not exist,
// duplicates across pools, names that do not resolve, a listener's
// upstream), through a real control socket to a real Server with a
// state_dir: each must get its 4xx with {"error": ...} naming the problem,
// and leave the state hash (the upstreams as served, the live pools, the
// status and the saved edits file) as it was.
func TestMalformedRealServer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	good := fmt.Sprintf(malformedConfig, filepath.Join(dir, "state"))
	s := newServer(t, path, good)
	s.resolveHost = func(ctx context.Context, addr string) (string, string, error) {
		if strings.Contains(addr, ".invalid:") { // no DNS in tests: fail at once
			return "", "", fmt.Errorf("lookup %s: no such host", addr)
		}
		return config.ResolveHost(ctx, addr)
	}
	runServer(t, s)
	const readTimeout = time.Second
	sock, c := startControl(t, s, control.ServerConfig{ReadTimeout: readTimeout})
	hc := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true, // each request on its own connection: the server's idle timeout is short
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	defer hc.CloseIdleConnections()
	ctx := context.Background()
	// One accepted edit, so that there is a journal for a refusal to spoil.
	if _, err := c.AddHost(ctx, "redis", "primary", control.HostSpec{ID: "r3", Address: "127.0.0.4:6379", Weight: 2}); err != nil {
		t.Fatal(err)
	}
	journal := filepath.Join(dir, "state", journalName)
	before := stateHash(t, hc, s, journal)
	if again := stateHash(t, hc, s, journal); again != before {
		t.Fatal("the state hash is not stable")
	}

	const hostp = "/v1/upstreams/redis/pools/primary/hosts"
	deep := `{"address":` + strings.Repeat(`{"a":`, 20000) + `1` + strings.Repeat(`}`, 20000) + `}` // over encoding/json's depth limit
	cases := []struct {
		name, method, path, body string
		code                     int
		want                     string // in the error
		field                    string // the error's field, if it names one
		setup                    func() // before the request (and after the hash)
	}{
		{name: "truncated", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","wei`, code: 400, want: "invalid JSON"},
		{name: "empty", method: "POST", path: hostp, body: ``, code: 400, want: "empty"},
		{name: "not an object", method: "POST", path: hostp, body: `[1,2]`, code: 400, want: "JSON object"},
		{name: "wrong type", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","weight":"5"}`, code: 400, want: "weight: must be an integer, not string", field: "weight"},
		{name: "wrong type address", method: "POST", path: hostp, body: `{"address":9}`, code: 400, want: "address: must be a string, not number", field: "address"},
		{name: "float weight", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","weight":1.5}`, code: 400, want: "weight", field: "weight"},
		{name: "unknown field", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","wieght":5}`, code: 400, want: "wieght: unknown field", field: "wieght"},
		{name: "trailing data", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1"} {"address":"10.0.0.8:1"}`, code: 400, want: "after the JSON object"},
		{name: "negative weight", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","weight":-1}`, code: 400, want: "weight: -1 is out of range", field: "weight"},
		{name: "huge weight", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","weight":99999999999}`, code: 400, want: "weight: 99999999999 is out of range", field: "weight"},
		{name: "overflow weight", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","weight":1e400}`, code: 400, want: "weight"},
		{name: "patch negative weight", method: "PATCH", path: hostp + "/r2", body: `{"weight":-5}`, code: 400, want: "weight: -5 is out of range", field: "weight"},
		{name: "patch huge weight", method: "PATCH", path: hostp + "/r2", body: `{"weight":1001}`, code: 400, want: "weight: 1001 is out of range", field: "weight"},
		{name: "no address", method: "POST", path: hostp, body: `{"weight":1}`, code: 400, want: "address: required", field: "address"},
		{name: "bad port", method: "POST", path: hostp, body: `{"address":"10.0.0.9:99999"}`, code: 400, want: "port", field: "address"},
		{name: "name does not resolve", method: "POST", path: hostp, body: `{"address":"nosuch.invalid:6379"}`, code: 400, want: "no such host", field: "address"},
		{name: "escaped nul in id", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","id":"a\u0000b"}`, code: 400, want: "id:", field: "id"},
		{name: "raw nul", method: "POST", path: hostp, body: "{\"address\":\"10.0.0.9:1\x00\"}", code: 400, want: "invalid JSON"},
		{name: "nul in path", method: "POST", path: hostp + "/r%002/down", code: 400, want: "control characters", field: "h"},
		{name: "invalid utf8", method: "POST", path: hostp, body: "{\"address\":\"10.0.0.9:1\",\"id\":\"\xff\xfe\"}", code: 400, want: "UTF-8"},
		{name: "invalid utf8 in path", method: "PATCH", path: hostp + "/r%ff", body: `{"weight":1}`, code: 400, want: "UTF-8", field: "h"},
		{name: "deep nesting", method: "POST", path: hostp, body: deep, code: 400, want: "invalid JSON"},
		{name: "unknown upstream", method: "POST", path: "/v1/upstreams/nope/pools/primary/hosts", body: `{"address":"10.0.0.9:1"}`, code: 404, want: `upstream "nope": not found`},
		{name: "unknown pool", method: "POST", path: "/v1/upstreams/redis/pools/nope/hosts", body: `{"address":"10.0.0.9:1"}`, code: 404, want: `pool "nope" of upstream "redis": not found`},
		{name: "unknown pool beats bad name", method: "POST", path: "/v1/upstreams/redis/pools/nope/hosts", body: `{"address":"nosuch.invalid:1"}`, code: 404, want: `pool "nope"`},
		{name: "unknown host", method: "PATCH", path: hostp + "/nope", body: `{"weight":1}`, code: 404, want: `host "nope" in pool "primary": not found`},
		{name: "host of another pool", method: "PATCH", path: hostp + "/d1", body: `{"weight":1}`, code: 404, want: `host "d1" in pool "primary"`},
		{name: "unknown host down", method: "POST", path: hostp + "/nope/down", code: 404, want: `host "nope"`},
		{name: "unknown host drain", method: "POST", path: hostp + "/nope/drain", code: 404, want: `host "nope"`},
		{name: "unknown host delete", method: "DELETE", path: hostp + "/nope", code: 404, want: `host "nope"`},
		{name: "unknown pool patch", method: "PATCH", path: "/v1/upstreams/redis/pools/nope", body: `{"priority":1}`, code: 404, want: `pool "nope"`},
		{name: "unknown pool delete", method: "DELETE", path: "/v1/upstreams/redis/pools/nope", code: 404, want: `pool "nope"`},
		{name: "unknown upstream get", method: "GET", path: "/v1/upstreams/nope", code: 404, want: `upstream "nope": not found`},
		{name: "unknown upstream delete", method: "DELETE", path: "/v1/upstreams/nope", code: 404, want: `upstream "nope": not found`},
		{name: "duplicate host", method: "POST", path: hostp, body: `{"address":"127.0.0.1:6379"}`, code: 409, want: `host "127.0.0.1:6379" in upstream "redis": already exists`},
		{name: "duplicate id", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","id":"r2"}`, code: 409, want: `host "r2" in upstream "redis": already exists`},
		{name: "duplicate id of an edit", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","id":"r3"}`, code: 409, want: `host "r3"`},
		{name: "duplicate id in another pool", method: "POST", path: hostp, body: `{"address":"10.0.0.9:1","id":"d1"}`, code: 409, want: `host "d1" in upstream "redis": already exists`},
		{name: "duplicate pool", method: "POST", path: "/v1/upstreams/redis/pools", body: `{"name":"dr","priority":1}`, code: 409, want: `pool "dr" of upstream "redis": already exists`},
		{name: "delete used upstream", method: "DELETE", path: "/v1/upstreams/redis", code: 409, want: `upstream "redis" is used by listener "front"`},
		{name: "patch no weight", method: "PATCH", path: hostp + "/r2", body: `{}`, code: 400, want: "weight: required", field: "weight"},
		{name: "patch null weight", method: "PATCH", path: hostp + "/r2", body: `{"weight":null}`, code: 400, want: "weight: required", field: "weight"},
		{name: "pool nothing", method: "PATCH", path: "/v1/upstreams/redis/pools/primary", body: `{}`, code: 400, want: "nothing to change"},
		{name: "pool bad method", method: "PATCH", path: "/v1/upstreams/redis/pools/primary", body: `{"method":"rr"}`, code: 400, want: `method: unknown method "rr"`, field: "method"},
		{name: "pool bad priority", method: "POST", path: "/v1/upstreams/redis/pools", body: `{"name":"x","priority":-3}`, code: 400, want: "priority: -3", field: "priority"},
		{name: "put name mismatch", method: "PUT", path: "/v1/upstreams/redis", body: `{"name":"other","pools":[{"name":"p"}]}`, code: 400, want: `name: "other" does not match`, field: "name"},
		{name: "put no pools", method: "PUT", path: "/v1/upstreams/redis", body: `{"pools":[]}`, code: 400, want: "pools: an upstream needs at least one pool", field: "pools"},
		{name: "put dup host", method: "PUT", path: "/v1/upstreams/redis", body: `{"pools":[{"name":"a","hosts":[{"address":"10.0.0.9:5"}]},{"name":"b","hosts":[{"address":"10.0.0.9:5"}]}]}`, code: 400, want: "pools[1].hosts[0].id: duplicate host", field: "pools[1].hosts[0].id"},
		{name: "put name does not resolve", method: "PUT", path: "/v1/upstreams/redis", body: `{"pools":[{"name":"a","hosts":[{"address":"10.0.0.9:5"},{"address":"nosuch.invalid:5"}]}]}`, code: 400, want: "no such host", field: "pools[0].hosts[1].address"},
		{name: "put bad nested weight", method: "PUT", path: "/v1/upstreams/redis", body: `{"pools":[{"name":"a","hosts":[{"address":"10.0.0.9:5","weight":-2}]}]}`, code: 400, want: "pools[0].hosts[0].weight", field: "pools[0].hosts[0].weight"},
		{name: "body on action", method: "POST", path: hostp + "/r2/down", body: `{"force":true}`, code: 400, want: "force: unknown field", field: "force"},
		{name: "query", method: "POST", path: hostp + "/r2/down?force=1", code: 400, want: "unexpected query"},
		{name: "reload body", method: "POST", path: "/v1/reload", body: `{"x":1}`, code: 400, want: "x: unknown field", field: "x"},
		{name: "reload broken file", method: "POST", path: "/v1/reload", code: 422, want: "upstream.redis.tries: must be 1..100",
			setup: func() {
				os.WriteFile(path, []byte(strings.Replace(good, "[upstream.redis]", "[upstream.redis]\ntries = -1", 1)), 0o644)
			}},
		{name: "reload syntax error", method: "POST", path: "/v1/reload", code: 422, want: "l4lb.toml:",
			setup: func() { os.WriteFile(path, []byte(good+"\n[[listener\n"), 0o644) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
				defer os.WriteFile(path, []byte(good), 0o644)
			}
			req, err := http.NewRequest(tc.method, "http://l4lb"+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var m struct{ Error, Field string }
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("%d, answer is not a JSON object: %q", resp.StatusCode, b)
			}
			if resp.StatusCode != tc.code || !strings.Contains(m.Error, tc.want) {
				t.Errorf("got %d %q, want %d and %q", resp.StatusCode, m.Error, tc.code, tc.want)
			}
			if tc.field != "" && m.Field != tc.field {
				t.Errorf("field %q, want %q (error %q)", m.Field, tc.field, m.Error)
			}
			if after := stateHash(t, hc, s, journal); after != before {
				t.Errorf("state changed: %s", b)
			}
		})
	}

	// A valid edit padded with whitespace to 10 MiB: only the body cap
	// stops it. Sent with a length, and chunked.
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("10 MiB chunked=%v", chunked), func(t *testing.T) {
			const size = 10 << 20
			edit := `{"address":"127.0.0.9:6379","id":"big","weight":1}`
			body := append([]byte(edit), bytes.Repeat([]byte(" "), size-len(edit))...)
			hdr := "POST " + hostp + " HTTP/1.1\r\nHost: l4lb\r\nContent-Type: application/json\r\n"
			if chunked {
				hdr += "Transfer-Encoding: chunked\r\n\r\n"
				body = append(append([]byte(strconv.FormatInt(size, 16)+"\r\n"), body...), "\r\n0\r\n\r\n"...)
			} else {
				hdr += "Content-Length: " + strconv.Itoa(size) + "\r\n\r\n"
			}
			code, m := rawRequest(t, sock, append([]byte(hdr), body...))
			if code != 413 || !strings.Contains(m["error"], "larger than 1048576 bytes") {
				t.Errorf("got %d %q, want 413 naming the cap", code, m["error"])
			}
			if after := stateHash(t, hc, s, journal); after != before {
				t.Error("state changed")
			}
		})
	}

	// One byte, then nothing: the connection is closed at the read timeout
	// with no answer but a 4xx, and nothing changes. Once in the request
	// line, once in the body of an otherwise valid edit.
	for _, tc := range []struct {
		name, send string
		code       int // 0 = closed with no answer
		want       string
	}{
		{"request line", "P", 0, ""},
		{"body", "POST " + hostp + " HTTP/1.1\r\nHost: l4lb\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{", 400, "reading request body"},
	} {
		t.Run("one byte then idle in the "+tc.name, func(t *testing.T) {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			if _, err := conn.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(5 * readTimeout))
			got, err := io.ReadAll(conn)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("after %v: %v (want the server to close)", took, err)
			}
			if took < readTimeout/2 || took > 3*readTimeout {
				t.Errorf("closed after %v, read timeout %v", took, readTimeout)
			}
			if tc.code == 0 {
				if len(got) != 0 && !bytes.HasPrefix(got, []byte("HTTP/1.1 4")) {
					t.Errorf("answer %q, want none or a 4xx", got)
				}
			} else {
				resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
				if err != nil {
					t.Fatalf("answer %q: %v", got, err)
				}
				b, _ := io.ReadAll(resp.Body)
				var m struct{ Error string }
				json.Unmarshal(b, &m)
				if resp.StatusCode != tc.code || !strings.Contains(m.Error, tc.want) {
					t.Errorf("got %d %s, want %d and %q", resp.StatusCode, b, tc.code, tc.want)
				}
			}
			t.Logf("closed %v after the byte (read timeout %v), answer %q", took.Round(time.Millisecond), readTimeout, firstLine(got))
			if after := stateHash(t, hc, s, journal); after != before {
				t.Error("state changed")
			}
		})
	}

	// The server is still fine: a good edit applies (and changes the hash).
	if _, err := c.AddHost(ctx, "redis", "primary", control.HostSpec{ID: "r4", Address: "127.0.0.5:6379", Weight: 1}); err != nil {
		t.Fatalf("a good edit after the bad ones: %v", err)
	}
	if stateHash(t, hc, s, journal) == before {
		t.Error("a good edit left the state hash unchanged: the hash sees nothing")
	}
}

func firstLine(b []byte) string {
	l, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(l)
}

// rawRequest writes req on a fresh connection to the socket (in the
// background: the server may stop reading, and close, long before the
// end) and returns the answer's status and JSON body.
func rawRequest(t *testing.T, sock string, req []byte) (int, map[string]string) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer conn.Close() // ends the writer once the answer is in
	wg.Go(func() { conn.Write(req) })
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		if errors.Is(err, io.EOF) {
			t.Fatal("closed with no answer")
		}
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]string
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%d, answer is not a JSON object: %q", resp.StatusCode, b)
	}
	return resp.StatusCode, m
}
