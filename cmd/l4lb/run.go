package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/rs/zerolog"
)

func check(path string, stdout, stderr io.Writer) int {
	if _, err := config.Load(path); err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// newLogger builds the one root logger; everything else gets it by value.
func newLogger(c config.Log, w io.Writer) zerolog.Logger {
	if c.Format != "json" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	lvl, err := zerolog.ParseLevel(c.Level)
	if err != nil || c.Level == "" {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

func run(path string, stderr io.Writer) int {
	cfg, err := config.Load(path)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	log := newLogger(cfg.Log, stderr)
	acc, accLog, err := openAccessLog(cfg.Log, os.Stdout, stderr)
	if err != nil {
		log.Error().Err(err).Msg("cannot open the access log")
		return 1
	}
	defer acc.Close() // nil-safe
	srv, err := server.New(path, cfg, log)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	srv.SetAccessLog(accLog)
	if err := srv.Bind(); err != nil {
		log.Error().Err(err).Msg("cannot listen")
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	// The control API stops with the listeners' context, but its own
	// goroutine is waited for before exit.
	ctlDone := make(chan error, 1)
	if c := cfg.Control; c.Socket != "" {
		cs := control.New(control.ServerConfig{Socket: c.Socket, Mode: c.FileMode, Group: c.Group, AllowUIDs: c.AllowUIDs}, srv, log)
		go func() { ctlDone <- cs.Run(ctx) }()
		select {
		case <-cs.Ready():
			log.Info().Str("socket", c.Socket).Msg("control API listening")
		case err := <-ctlDone:
			log.Error().Err(err).Msg("control API")
			stop()
			<-done
			return 1
		}
	} else {
		ctlDone <- nil
	}
	metricsDone, err := startMetrics(ctx, cfg, srv, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot serve metrics")
		stop()
		<-done
		<-ctlDone
		return 1
	}
	log.Info().Str(logkey.Version, versionString()).Str(logkey.Config, path).Msg("l4lb ready")

	for {
		select {
		case <-hup:
			srv.Reload()                         // logs and counts its own failure; the old config stays
			if err := acc.Reopen(); err != nil { // logrotate moved it
				log.Error().Err(err).Msg("reopening the access log")
			}
		case <-ctx.Done():
			log.Info().Msg("shutting down: no new connections; draining")
			start := time.Now()
			err := <-done
			if err != nil {
				log.Error().Err(err).Msg("stopped with errors")
			}
			if err := <-ctlDone; err != nil {
				log.Error().Err(err).Msg("control API")
			}
			if err := <-metricsDone; err != nil {
				log.Error().Err(err).Msg("metrics")
			}
			log.Info().Float64(logkey.Duration, time.Since(start).Seconds()).Msg("stopped")
			return 0
		case err := <-done:
			log.Error().Err(err).Msg("stopped unexpectedly")
			return 1
		}
	}
}
