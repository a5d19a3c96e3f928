package metrics

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// shutdownTimeout bounds how long Run waits for scrapes in progress once
// its context ends; then they are cut.
const shutdownTimeout = 5 * time.Second

// Server serves a registry over HTTP: GET /metrics (Prometheus text) and
// GET /healthz ("ok"). Everything else is 404.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr ("127.0.0.1:9790") to serve h (from NewHandler) at
// /metrics. It starts nothing: call Run.
func Listen(addr string, h http.Handler, log zerolog.Logger) (*Server, error) {
	// SO_REUSEPORT: during an upgrade (SIGUSR2) the new process binds the
	// metrics address while the old one, draining, still holds it.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	return &Server{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          stdlog.New(log, "metrics: ", 0),
	}}, nil
}

// Addr returns the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends, then lets scrapes in progress finish (up to
// 5s) and returns once the server has stopped. It returns nil after a
// clean stop.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go serve(s.srv, s.ln, errc)
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

func serve(srv *http.Server, ln net.Listener, errc chan<- error) { errc <- srv.Serve(ln) }
