package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/pool"
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

	ups := buildUpstreams(cfg)
	var lns []*proxy.Listener
	for _, lc := range cfg.Listeners {
		l, err := proxy.Listen(lc.Name, lc.Network, lc.Address, settings(lc, cfg.Upstreams[lc.Upstream], ups[lc.Upstream]), log)
		if err != nil {
			log.Error().Err(err).Str(logkey.Listener, lc.Name).Msg("cannot listen")
			for _, l := range lns {
				l.Close()
			}
			return 1
		}
		lns = append(lns, l)
		log.Info().Str(logkey.Listener, lc.Name).Str(logkey.Address, l.Addr().String()).
			Str(logkey.Upstream, lc.Upstream).Msg("listening")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var wg sync.WaitGroup
	for _, l := range lns {
		wg.Add(1)
		go runListener(ctx, l, &wg, log)
	}
	log.Info().Str(logkey.Version, versionString()).Str(logkey.Config, path).Msg("l4lb ready")

	for done := false; !done; {
		select {
		case <-hup:
			log.Warn().Msg("SIGHUP: reload is not supported in this version; keeping the running config")
		case <-ctx.Done():
			done = true
		}
	}
	log.Info().Msg("shutting down: no new connections; draining")
	start := time.Now()
	wg.Wait()
	log.Info().Float64(logkey.Duration, time.Since(start).Seconds()).Msg("stopped")
	return 0
}

func runListener(ctx context.Context, l *proxy.Listener, wg *sync.WaitGroup, log zerolog.Logger) {
	defer wg.Done()
	if err := l.Run(ctx); err != nil {
		log.Error().Err(err).Str(logkey.Listener, l.Name()).Msg("listener stopped")
	}
}

// buildUpstreams turns the validated config into live upstreams.
func buildUpstreams(cfg *config.Config) map[string]*pool.Upstream {
	ups := make(map[string]*pool.Upstream, len(cfg.Upstreams))
	for name, uc := range cfg.Upstreams {
		var pools []*pool.Pool
		for _, pc := range uc.Pools {
			hosts := make([]*pool.Host, 0, len(pc.Hosts))
			for _, hc := range pc.Hosts {
				hosts = append(hosts, pool.NewHost(hc.ID, hc.Network, hc.Dial, *hc.Weight))
			}
			method := pc.Method
			if method == "" {
				method = uc.Method
			}
			p, err := pool.NewPool(pc.Name, pc.Priority, pool.Method(method), hosts)
			if err != nil {
				// config.Load validated the method; this is a programming error.
				panic(fmt.Sprintf("upstream %s pool %s: %v", name, pc.Name, err))
			}
			pools = append(pools, p)
		}
		allDown := pool.AllDownReject
		if uc.AllDown == "try_all" {
			allDown = pool.AllDownTryAll
		}
		ups[name] = pool.NewUpstream(name, pools, allDown)
	}
	return ups
}

func settings(lc *config.Listener, uc *config.Upstream, u *pool.Upstream) *proxy.Settings {
	return &proxy.Settings{
		Upstream:       u,
		Tries:          uc.Tries,
		ConnectTimeout: time.Duration(lc.ConnectTimeout),
		IdleTimeout:    time.Duration(lc.IdleTimeout),
		FinTimeout:     time.Duration(lc.FinTimeout),
		DrainTimeout:   time.Duration(lc.DrainTimeout),
	}
}
