package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/pool"
)

// statusFake answers GET /v1/status with st; nothing else is used.
type statusFake struct {
	control.API
	st control.Status
}

func (f statusFake) Status() control.Status { return f.st }

// ctlStatus runs `l4lb ctl status` against a control server that answers
// with st, and returns what it printed.
func ctlStatus(t *testing.T, st control.Status) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "l4lbctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	srv := control.New(control.ServerConfig{Socket: sock}, statusFake{st: st}, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	t.Cleanup(func() { cancel(); <-done })
	code, out, errs := ctlRun(context.Background(), "--socket", sock, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	return out
}

// TestCtlStatusDiscoveryAndStore: `l4lb ctl status` of an instance with
// Consul pools and the fleet store ends with the discovery table (one row
// per consul pool: the watch, where its hosts come from, the index, the
// age, the hosts, the last error) and the store line.
func TestCtlStatusDiscoveryAndStore(t *testing.T) {
	st := control.Status{
		Hosts: []control.HostStatus{{Upstream: "redis", Pool: "primary", Source: control.SourceConsul, HostStats: pool.HostStats{
			ID: "10.0.0.1:6379", Address: "10.0.0.1:6379", Weight: 1, State: pool.StateUp, Since: t0.Add(-time.Minute)}}},
		Discovery: []control.DiscoveryStatus{
			{Upstream: "redis", Pool: "primary", Watch: "redis?passing=1&tag=primary", Source: "consul", Index: 812,
				Updated: t0.Add(-4 * time.Second), Age: "4s", Hosts: 1},
			{Upstream: "redis", Pool: "replicas", Watch: "redis?passing=1&tag=replica", Source: "last_known_good", Index: 790,
				Updated: t0.Add(-time.Hour), Age: "1h0m0s", Hosts: 2, Failures: 3,
				Error: `Get "http://127.0.0.1:8500/v1/health/service/redis": connection refused`},
			{Upstream: "dns", Pool: "main", Watch: "dns", Source: "waiting", Hosts: 0},
		},
		Store: &control.StoreStatus{Kind: "consul", Key: "l4lb/prod/edits", Source: "consul", Index: 812, Edits: 3, InSync: true,
			Updated: t0.Add(-4 * time.Second), Age: "4s"},
	}
	out := ctlStatus(t, st)
	want := `
UPSTREAM  POOL      CONSUL                       SOURCE           INDEX  AGE     HOSTS  ERROR
redis     primary   redis?passing=1&tag=primary  consul           812    4s      1      -
redis     replicas  redis?passing=1&tag=replica  last_known_good  790    1h0m0s  2      Get "http://127.0.0.1:8500/v1/health/service/redis": connection refused
dns       main      dns                          waiting          0      -       0      -

store: consul l4lb/prod/edits index 812, 3 edits, in sync (answered 4s ago)
`
	if !strings.HasSuffix(out, want[1:]) {
		t.Errorf("status ends with:\n%s\nwant:\n%s", tail(out, 6), want[1:])
	}
	// The host table comes first, the discovery table and the store line after it.
	if !strings.HasPrefix(out, "UPSTREAM  POOL     HOST") {
		t.Errorf("status does not start with the host table:\n%s", out)
	}

	// Without consul pools there is no discovery table; the local store is one line.
	out = ctlStatus(t, control.Status{Store: &control.StoreStatus{Kind: "local", Key: "/var/lib/l4lb/edits.json", Edits: 2, InSync: true}})
	if strings.Contains(out, "CONSUL") || !strings.HasSuffix(out, "\n\nstore: local /var/lib/l4lb/edits.json, 2 edits\n") {
		t.Errorf("local store status:\n%s", out)
	}
}

// TestStoreLine: the store line in each state the status can report.
func TestStoreLine(t *testing.T) {
	for _, c := range []struct {
		name string
		st   control.StoreStatus
		want string
	}{
		{"local", control.StoreStatus{Kind: "local", Key: "/var/lib/l4lb/edits.json", Edits: 2, InSync: true},
			"store: local /var/lib/l4lb/edits.json, 2 edits"},
		{"local, no state_dir", control.StoreStatus{Kind: "local", InSync: true},
			"store: local -, 0 edits"},
		{"in sync", control.StoreStatus{Kind: "consul", Key: "l4lb/prod/edits", Source: "consul", Index: 812, Edits: 3, InSync: true, Age: "4s"},
			"store: consul l4lb/prod/edits index 812, 3 edits, in sync (answered 4s ago)"},
		{"cut off", control.StoreStatus{Kind: "consul", Key: "l4lb/prod/edits", Source: "consul", Index: 790, Edits: 3, Failures: 4,
			LastError: `Get "http://127.0.0.1:8500/v1/kv/l4lb/prod/edits": connection refused`, Age: "1m3s"},
			`store: consul l4lb/prod/edits index 790, 3 edits, NOT in sync: 4 failures; Get "http://127.0.0.1:8500/v1/kv/l4lb/prod/edits": connection refused; last answer 1m3s ago`},
		{"started cut off", control.StoreStatus{Kind: "consul", Key: "l4lb/prod/edits", Source: "last_known_good", Index: 790, Edits: 2, Failures: 1,
			LastError: "connection refused"},
			"store: consul l4lb/prod/edits index 790, 2 edits, NOT in sync: serving last_known_good; 1 failure; connection refused"},
		{"nothing read yet", control.StoreStatus{Kind: "consul", Key: "l4lb/prod/edits", Source: "none"},
			"store: consul l4lb/prod/edits index 0, 0 edits, NOT in sync: serving none"},
	} {
		if got := storeLine(c.st); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
