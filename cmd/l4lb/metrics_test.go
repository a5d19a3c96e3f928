package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/rs/zerolog"
)

func TestStartMetrics(t *testing.T) {
	cfg, err := config.Parse("t.toml", []byte("[metrics]\nlisten = \"127.0.0.1:0\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New("", cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, err := startMetrics(ctx, cfg, srv, zerolog.New(&logBuf))
	if err != nil {
		t.Fatal(err)
	}
	// The bound address is in the "metrics listening" line.
	var addr string
	for _, l := range strings.Split(logBuf.String(), "\n") {
		if _, rest, ok := strings.Cut(l, `"address":"`); ok {
			addr, _, _ = strings.Cut(rest, `"`)
		}
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics at %q: %v", addr, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `l4lb_build_info{version="`) {
		t.Errorf("no build info in\n%s", body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("metrics server did not stop")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("still listening")
	}
}

func TestStartMetricsOff(t *testing.T) {
	cfg, err := config.Parse("t.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	done, err := startMetrics(context.Background(), cfg, nil, zerolog.Nop())
	if err != nil || <-done != nil {
		t.Errorf("without [metrics]: %v", err)
	}
}

func TestOpenAccessLog(t *testing.T) {
	var stdout, stderr bytes.Buffer
	path := filepath.Join(t.TempDir(), "access.log")
	for _, tt := range []struct {
		access   string
		file     bool
		logger   bool
		wantOut  *bytes.Buffer
		wantFail bool
	}{
		{"", false, false, nil, false},
		{"stderr", false, true, &stderr, false},
		{"stdout", false, true, &stdout, false},
		{path, true, true, nil, false},
		{filepath.Join(path, "not-a-dir", "x.log"), false, false, nil, true},
	} {
		f, lg, err := openAccessLog(config.Log{Access: tt.access}, &stdout, &stderr)
		if (err != nil) != tt.wantFail || (f != nil) != tt.file || (lg != nil) != tt.logger {
			t.Errorf("%q: file %v, logger %v, err %v", tt.access, f != nil, lg != nil, err)
			continue
		}
		if lg != nil {
			lg.Info().Msg("connection closed")
		}
		if tt.wantOut != nil && !strings.Contains(tt.wantOut.String(), `"message":"connection closed"`) {
			t.Errorf("%q: nothing written", tt.access)
		}
		if err := f.Reopen(); err != nil {
			t.Errorf("%q: Reopen: %v", tt.access, err)
		}
		f.Close()
	}
}
