package main

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/sdnotify"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/l4lb/l4lb/internal/upgrade"
	"github.com/rs/zerolog"
)

// upgradeTimeout bounds a new binary's start: config load, binds, control
// socket. Past it the new process is killed and the old one goes on.
const upgradeTimeout = 30 * time.Second

// notifyingAPI is the server as the control API sees it, with reloads
// framed by RELOADING=1 / READY=1 for systemd, whichever way they come
// (SIGHUP or POST /v1/reload).
type notifyingAPI struct {
	*server.Server
	notify *sdnotify.Notifier
}

var _ control.API = notifyingAPI{}

func (a notifyingAPI) Reload() error {
	a.notify.Reloading()
	defer a.notify.Ready()
	return a.Server.Reload()
}

func controlConfig(c config.Control) control.ServerConfig {
	return control.ServerConfig{Socket: c.Socket, Mode: c.FileMode, Group: c.Group, AllowUIDs: c.AllowUIDs}
}

// ctlRunner runs the control API and can stop it and start it again: an
// upgrade lets the control socket go, and takes it back if the new binary
// fails.
type ctlRunner struct {
	cfg    control.ServerConfig // Socket "" = no control API
	api    control.API
	log    zerolog.Logger
	cancel context.CancelFunc // nil when not running
	done   chan error
}

// start binds the socket and serves until ctx ends or stop; it returns once
// the socket is bound.
func (r *ctlRunner) start(ctx context.Context) error {
	if r.cfg.Socket == "" || r.cancel != nil {
		return nil
	}
	cs := control.New(r.cfg, r.api, r.log)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go runControl(cctx, cs, done)
	select {
	case <-cs.Ready():
		r.cancel, r.done = cancel, done
		return nil
	case err := <-done:
		cancel()
		return err
	}
}

func runControl(ctx context.Context, cs *control.Server, done chan<- error) { done <- cs.Run(ctx) }

// stop stops the control API, socket file removed, and waits for it.
func (r *ctlRunner) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	err := <-r.done
	r.cancel, r.done = nil, nil
	return err
}

// upgradeTo starts the binary at os.Executable() with this process's
// command line and sockets (package upgrade). It returns true once the new
// process serves; the caller then drains and exits. On false nothing has
// changed: this process serves, its control socket bound again.
func upgradeTo(ctx context.Context, srv *server.Server, ctl *ctlRunner, notify *sdnotify.Notifier, log zerolog.Logger) bool {
	notify.Reloading()
	start := time.Now()
	child, err := startChild(srv)
	if err != nil {
		log.Error().Err(err).Msg("upgrade failed; still serving")
		notify.Ready()
		return false
	}
	log.Info().Int("pid", child.Pid()).Msg("upgrade: new process started")
	if err := handOver(ctx, child, ctl); err != nil {
		exit := child.Abort()
		log.Error().Err(err).Int("pid", child.Pid()).Str("exit", exit.Error()).Msg("upgrade failed; still serving")
		if err := ctl.start(ctx); err != nil {
			log.Error().Err(err).Msg("control API: cannot bind again after the failed upgrade")
		}
		notify.MainPID(os.Getpid()) // the child may have claimed it
		return false
	}
	log.Info().Int("pid", child.Pid()).Float64("duration", time.Since(start).Seconds()).Msg("upgrade: new process serving")
	child.Release()
	return true
}

func startChild(srv *server.Server) (*upgrade.Child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	socks, err := srv.Sockets()
	if err != nil {
		return nil, err
	}
	us := make([]upgrade.Socket, len(socks))
	for i, s := range socks {
		us[i] = upgrade.Socket{Network: s.Network, Address: s.Address, File: s.File}
	}
	child, err := upgrade.Start(exe, os.Args[1:], us)
	for _, s := range socks {
		s.File.Close() // the child has its copies
	}
	return child, err
}

// handOver runs the protocol with a started child: ready, control socket
// released, go, done.
func handOver(ctx context.Context, child *upgrade.Child, ctl *ctlRunner) error {
	ctx, cancel := context.WithTimeoutCause(ctx, upgradeTimeout, errors.New("the new process did not start in time"))
	defer cancel()
	if err := child.WaitReady(ctx); err != nil {
		return err
	}
	if err := ctl.stop(); err != nil {
		return err
	}
	if err := child.Proceed(); err != nil {
		return err
	}
	return child.WaitDone(ctx)
}
