package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/activation"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/consolelog"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/sdnotify"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/l4lb/l4lb/internal/upgrade"
	"github.com/l4lb/l4lb/splice"
	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// fitProcs lowers GOMAXPROCS to the engine's loop count (never raises
// it), unless the GOMAXPROCS environment variable sets it. The loops carry
// the bytes; every other goroutine (accept, connect, probes, the control
// API) is light, and Ps beyond the loops only add idle threads that wake,
// find nothing and sleep again, each a context switch. Measured on two
// CPUs (one loop): proxy CPU per new connection 87 -> 78 us, context
// switches per connection 0.55-0.88 -> 0.14-0.21; bulk, pipelined GET and
// UDP unchanged. Setting GOMAXPROCS also ends Go's own updates of it when
// the cgroup's CPU limit changes; the loop count does not follow them
// either.
func fitProcs(loops int) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n := splice.ResolveLoops(loops); n < runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
	}
}

func check(path string, stdout, stderr io.Writer) int {
	if _, err := config.Load(path); err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// newLogger builds the one root logger; everything else gets it by value.
// Console lines are coloured only on a terminal; journald, files and pipes
// get plain text from consolelog: zerolog's console bytes for an eighth of
// the CPU (a line per connection is logged there).
func newLogger(c config.Log, w io.Writer) zerolog.Logger {
	const timeFormat = "15:04:05.000"
	switch {
	case c.Format == "json":
	case isTerminal(w):
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: timeFormat}
	default:
		w = consolelog.New(w, timeFormat)
	}
	lvl, err := zerolog.ParseLevel(c.Level)
	if err != nil || c.Level == "" {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

// activationListeners names the listeners for package activation.
func activationListeners(cfg *config.Config) []activation.Listener {
	var out []activation.Listener
	for _, l := range cfg.Listeners {
		out = append(out, activation.Listener{Name: l.Name, Network: l.Network, Address: l.Address})
	}
	return out
}

func run(path string, stderr io.Writer) int {
	// Signals first: SIGHUP and SIGUSR2 kill a process that has not asked
	// for them, and an upgraded process can be sent one early.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)

	handover, err := upgrade.FromEnv() // nil unless an old l4lb started us
	if err != nil {
		fmt.Fprintln(stderr, "l4lb:", err)
		return 1
	}
	defer handover.Close()

	cfg, err := config.Load(path)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	fitProcs(cfg.Engine.Loops)
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
	// Sockets from systemd (a socket unit), unless an old l4lb hands its
	// own over; FromEnv unsets the variables either way.
	activated, err := activation.FromEnv(activationListeners(cfg))
	if err != nil {
		log.Error().Err(err).Msg("socket activation")
		return 1
	}
	defer activated.Close() // nil-safe
	switch {
	case handover != nil:
		srv.Inherit(handover)
	case activated != nil:
		srv.Inherit(activated)
	}
	if err := srv.Bind(); err != nil {
		log.Error().Err(err).Msg("cannot listen")
		return 1
	}
	for _, so := range activated.Unused() {
		ev := log.Warn().Int("fd", so.FD).Str("name", so.Name)
		if so.Network == "" {
			ev.Str(logkey.Reason, so.Why).Msg("socket from systemd ignored: l4lb cannot serve on it")
		} else {
			ev.Str(logkey.Address, so.Network+" "+so.Address).Msg("socket from systemd not used by any listener")
		}
	}
	if handover != nil {
		// The old process lets its control socket go once we are bound.
		if err := handover.Ready(ctx); err != nil {
			log.Error().Err(err).Msg("upgrade")
			return 1
		}
	}

	notify := sdnotify.FromEnv()
	api := notifyingAPI{Server: srv, notify: notify}
	ctl := &ctlRunner{api: api, log: log}
	if c := cfg.Control; c.Socket != "" {
		ctl.cfg = controlConfig(c)
		if err := ctl.start(ctx); err != nil {
			log.Error().Err(err).Msg("control API")
			return 1
		}
		log.Info().Str("socket", c.Socket).Msg("control API listening")
	}

	// The listeners' context: a signal ends it, and so does handing them
	// over to a new binary.
	srvCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	done := make(chan error, 1)
	go func() { done <- srv.Run(srvCtx) }()

	metricsDone, err := startMetrics(ctx, cfg, srv, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot serve metrics")
		stopServing()
		<-done
		ctl.stop()
		return 1
	}

	if handover != nil {
		// Main PID before "done": if we die in between, the old process
		// takes the main PID back.
		notify.MainPID(os.Getpid())
		if err := handover.Done(); err != nil {
			log.Warn().Err(err).Msg("upgrade: telling the old process")
		}
	} else {
		notify.Ready()
	}
	log.Info().Str(logkey.Version, versionString()).Str(logkey.Config, path).Int("pid", os.Getpid()).
		Int("engine_loops", splice.ResolveLoops(cfg.Engine.Loops)).Int("go_procs", runtime.GOMAXPROCS(0)).
		Str("engine_writes", splice.RingWrites()).Msg("l4lb ready")

	// The watchdog ticks in this loop: a stuck loop stops the pings.
	var watchdog <-chan time.Time
	if d, err := sdnotify.WatchdogInterval(); err == nil {
		t := time.NewTicker(d)
		defer t.Stop()
		watchdog = t.C
	} else if err != sdnotify.ErrNoWatchdog {
		log.Warn().Err(err).Msg("systemd watchdog ignored")
	}

	// shutdown finishes a signalled stop: ran delivers what the
	// listeners' Run returns once drained.
	shutdown := func(ran <-chan error) int {
		notify.Stopping()
		log.Info().Msg("shutting down: no new connections; draining")
		start := time.Now()
		if runErr := <-ran; runErr != nil {
			log.Error().Err(runErr).Msg("stopped with errors")
		}
		if err := ctl.stop(); err != nil {
			log.Error().Err(err).Msg("control API")
		}
		if err := <-metricsDone; err != nil {
			log.Error().Err(err).Msg("metrics")
		}
		log.Info().Float64(logkey.Duration, time.Since(start).Seconds()).Msg("stopped")
		return 0
	}

	for {
		select {
		case <-hup:
			api.Reload()                         // logs and counts its own failure; the old config stays
			if err := acc.Reopen(); err != nil { // logrotate moved it
				log.Error().Err(err).Msg("reopening the access log")
			}
		case <-watchdog:
			notify.Watchdog()
		case <-usr2:
			if !upgradeTo(ctx, srv, ctl, notify, log) {
				continue
			}
			// A new process serves: no more notify messages from us (a
			// STOPPING=1 would stop the service).
			stopServing()
			start := time.Now()
			log.Info().Msg("upgrade: handed over; no new connections; draining")
			if err := <-done; err != nil {
				log.Error().Err(err).Msg("stopped with errors")
			}
			log.Info().Float64(logkey.Duration, time.Since(start).Seconds()).Msg("stopped after upgrade")
			return 0
		case <-ctx.Done():
			return shutdown(done)
		case err := <-done:
			// A signal ends the listeners' context too: Run can return
			// before this loop sees ctx.Done. That is a shutdown.
			if ctx.Err() != nil {
				ran := make(chan error, 1)
				ran <- err
				return shutdown(ran)
			}
			log.Error().Err(err).Msg("stopped unexpectedly")
			return 1
		}
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	return isatty.IsTerminal(f.Fd())
}
