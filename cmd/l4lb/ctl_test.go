package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/pool"
)

var t0 = time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)

// ctlFake serves one upstream. Methods the tests do not use are left to
// the nil embedded API (they would panic).
type ctlFake struct {
	control.API
	mu    sync.Mutex
	hosts []control.Host
	feed  *events.Feed
}

func (f *ctlFake) Upstream(name string) (control.Upstream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "redis" {
		return control.Upstream{}, fmt.Errorf("upstream %q: %w", name, control.ErrNotFound)
	}
	return control.Upstream{Name: "redis", Pools: []control.Pool{{Name: "primary", Hosts: append([]control.Host(nil), f.hosts...)}}}, nil
}

func (f *ctlFake) AddHost(u, p string, h control.HostSpec) error {
	if _, err := f.Upstream(u); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = append(f.hosts, control.Host{ID: h.Address, Address: h.Address, Weight: h.Weight, Source: control.SourceAPI})
	return nil
}

func (f *ctlFake) HostAction(u, p, h string, a control.Action) error {
	return fmt.Errorf("host %q in pool %q of upstream %q: %w", h, p, u, control.ErrNotFound)
}

func (f *ctlFake) Status() control.Status {
	return control.Status{Hosts: []control.HostStatus{
		{Upstream: "redis", Pool: "primary", Source: control.SourceConfig, HostStats: pool.HostStats{
			ID: "10.0.0.1:6379", Address: "10.0.0.1:6379", Weight: 10, State: pool.StateUp,
			Since: t0.Add(-3*time.Minute - 12*time.Second), Active: 3, Total: 1234, BytesToHost: 1536, BytesFromHost: 5 << 20}},
		{Upstream: "redis", Pool: "primary", Source: control.SourceAPI, HostStats: pool.HostStats{
			ID: "r2", Address: "10.0.0.2:6379", Weight: 0, State: pool.StateDown, Reason: "connection refused",
			Since: t0.Add(-26 * time.Hour), FailCount: 4}},
		{Upstream: "dns", Pool: "main", Source: control.SourceConsul, HostStats: pool.HostStats{
			ID: "10.0.1.1:53", Address: "10.0.1.1:53", Weight: 1, State: pool.StateDraining, Since: t0.Add(-5 * time.Second)},
			DrainDeadline: time.Now().Add(time.Hour)},
	}}
}

func (f *ctlFake) Subscribe(since uint64, buf int) ([]events.Event, *events.Sub) {
	return f.feed.Subscribe(since, buf)
}

func serveCtl(t *testing.T) (string, *ctlFake) {
	t.Helper()
	dir, err := os.MkdirTemp("", "l4lbctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	f := &ctlFake{feed: events.New(16)}
	srv := control.New(control.ServerConfig{Socket: sock}, f, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	t.Cleanup(func() { cancel(); <-done })
	return sock, f
}

func ctlRun(ctx context.Context, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := runCtl(ctx, ctlEnv{args: args, stdout: &out, stderr: &errb,
		getenv: func(string) string { return "" }, now: func() time.Time { return t0 }})
	return code, out.String(), errb.String()
}

func TestCtlStatusTable(t *testing.T) {
	sock, _ := serveCtl(t)
	code, out, errs := ctlRun(context.Background(), "--socket", sock, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := `UPSTREAM  POOL     HOST                SOURCE  STATE                 WEIGHT  ACTIVE  TOTAL  TO_HOST  FROM_HOST  FAILS  SINCE  REASON
redis     primary  10.0.0.1:6379       config  up                    10      3       1234   1.5 KiB  5.0 MiB    0      3m12s  -
redis     primary  r2=10.0.0.2:6379    api     down                  0       0       0      0 B      0 B        4      1d2h   connection refused
dns       main     10.0.1.1:53         consul  draining (1h0m0s left)  1       0       0      0 B      0 B        0      5s     -
`
	// The drain countdown moves; compare with it normalised.
	norm := func(s string) string {
		return strings.Join(strings.Fields(strings.ReplaceAll(s, "(59m59.9s left)", "(1h0m0s left)")), " ")
	}
	if norm(out) != norm(want) {
		t.Errorf("status table:\n%s\nwant:\n%s", out, want)
	}
	// Columns are aligned: every line has the SOURCE column at the same offset.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	col := strings.Index(lines[0], "SOURCE")
	for _, l := range lines[1:] {
		if l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("misaligned: %q", l)
		}
	}
}

func TestCtlJSON(t *testing.T) {
	sock, _ := serveCtl(t)
	code, out, _ := ctlRun(context.Background(), "status", "--json", "--socket="+sock)
	var st control.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Hosts) != 3 || st.Hosts[2].DrainRemaining <= 0 {
		t.Fatalf("exit %d, %q", code, out)
	}
}

func TestCtlExitCodes(t *testing.T) {
	sock, f := serveCtl(t)
	ctx := context.Background()
	cases := []struct {
		args      []string
		code      int
		out, errs string
	}{
		{[]string{"host", "add", "redis", "primary", "10.0.0.3:6379", "--weight", "5"}, 0, "host 10.0.0.3:6379 added to redis/primary", ""},
		{[]string{"host", "add", "redis", "primary", "10.0.0.4:6379", "--weight", "-1"}, 1, "", "weight: -1 is out of range"},
		{[]string{"host", "add", "nope", "primary", "10.0.0.4:6379"}, 1, "", `upstream "nope": not found`},
		{[]string{"host", "down", "redis", "primary", "10.9.9.9:1"}, 1, "", `host "10.9.9.9:1" in pool "primary" of upstream "redis": not found`},
		{[]string{"host", "frob", "redis", "primary", "x"}, 64, "", "unknown verb"},
		{[]string{"host", "add", "redis", "primary"}, 64, "", "want: host add"},
		{[]string{"status", "--bogus"}, 64, "", "unknown flag"},
		{[]string{"help"}, 0, "usage: l4lb ctl", ""},
	}
	for _, c := range cases {
		code, out, errs := ctlRun(ctx, append([]string{"--socket", sock}, c.args...)...)
		if code != c.code || !strings.Contains(out, c.out) || !strings.Contains(errs, c.errs) {
			t.Errorf("%v: exit %d\nstdout %q\nstderr %q\nwant exit %d, %q, %q", c.args, code, out, errs, c.code, c.out, c.errs)
		}
	}
	if len(f.hosts) != 1 || f.hosts[0].Weight != 5 {
		t.Errorf("hosts: %+v", f.hosts)
	}
	code, _, errs := ctlRun(ctx, "--socket", filepath.Join(t.TempDir(), "none.sock"), "status")
	if code != 2 || !strings.Contains(errs, "cannot reach l4lb") {
		t.Errorf("no socket: exit %d %q", code, errs)
	}
}

func TestCtlSocketFromEnv(t *testing.T) {
	sock, _ := serveCtl(t)
	var out, errb bytes.Buffer
	code := runCtl(context.Background(), ctlEnv{args: []string{"status"}, stdout: &out, stderr: &errb,
		getenv: func(k string) string {
			if k == "L4LB_SOCKET" {
				return sock
			}
			return ""
		}, now: time.Now})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}

func TestCtlEvents(t *testing.T) {
	sock, f := serveCtl(t)
	f.feed.Publish(events.Event{Kind: events.HostDown, Upstream: "redis", Pool: "primary", Host: "r2", Reason: "connection refused", Time: t0})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	code, out, errs := ctlRun(ctx, "--socket", sock, "events", "--since", "0")
	if code != 0 || !strings.Contains(out, "host_down") || !strings.Contains(out, "redis/primary/r2  connection refused") {
		t.Errorf("exit %d, %q %q", code, out, errs)
	}
}
