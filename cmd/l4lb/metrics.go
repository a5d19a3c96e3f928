package main

import (
	"context"
	"io"

	"github.com/l4lb/l4lb/internal/accesslog"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/metrics"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/rs/zerolog"
)

// startMetrics serves Prometheus metrics for srv when [metrics] listen is
// set. The port is bound before it returns, so a taken port fails the
// start; the server then runs until ctx ends, and done yields its result
// once it has stopped (nil after a clean stop). Without [metrics], done
// yields nil at once.
func startMetrics(ctx context.Context, cfg *config.Config, srv *server.Server, log zerolog.Logger) (done <-chan error, err error) {
	ch := make(chan error, 1)
	if cfg.Metrics.Listen == "" {
		ch <- nil
		return ch, nil
	}
	ms, err := metrics.Listen(cfg.Metrics.Listen, metrics.NewHandler(srv, versionString()), log)
	if err != nil {
		return nil, err
	}
	log.Info().Str(logkey.Address, ms.Addr().String()).Msg("metrics listening")
	go runMetrics(ctx, ms, ch)
	return ch, nil
}

func runMetrics(ctx context.Context, ms *metrics.Server, done chan<- error) { done <- ms.Run(ctx) }

// openAccessLog opens the access log [log] access names. It returns the
// file to Reopen on SIGHUP and Close at exit (nil when the destination is
// not a file; both methods then do nothing), and the logger to give the
// listeners as their Settings.Access (nil: the main log, as without
// [log] access).
func openAccessLog(c config.Log, stdout, stderr io.Writer) (*accesslog.File, *zerolog.Logger, error) {
	var w io.Writer
	var f *accesslog.File
	switch c.Access {
	case "":
		return nil, nil, nil
	case config.AccessStderr:
		w = stderr
	case config.AccessStdout:
		w = stdout
	default:
		var err error
		if f, err = accesslog.Open(c.Access); err != nil {
			return nil, nil, err
		}
		w = f
	}
	lg := accesslog.Logger(w)
	return f, &lg, nil
}
