package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/l4lb/l4lb/control"
)

// ctlSocketPath returns a socket path in a fresh directory with a short
// name: sun_path holds 108 bytes, and t.TempDir paths with long test names
// do not always fit.
func ctlSocketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "l4lbsrv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "ctl.sock")
}

// startControl serves api on a real control socket until the test ends
// and returns the socket and a client for it.
func startControl(t *testing.T, api control.API, cfg control.ServerConfig) (string, *control.Client) {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = ctlSocketPath(t)
	}
	cs := control.New(cfg, api, logger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cs.Run(ctx) }()
	select {
	case <-cs.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("control server: %v", err)
	}
	c := control.NewClient(cfg.Socket)
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control server: %v", err)
		}
	})
	return cfg.Socket, c
}
