package main

import (
	"context"
	"net"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
)

// listener is what run starts and stops: a TCP listener (package proxy) or
// a UDP one (package udp).
type listener interface {
	Name() string
	Addr() net.Addr
	Run(ctx context.Context) error
	Close() error
}

var (
	_ listener = (*proxy.Listener)(nil)
	_ listener = (*udp.Listener)(nil)
)

// listen binds lc with the engine its protocol needs. It starts nothing.
func listen(lc *config.Listener, uc *config.Upstream, u *pool.Upstream, log zerolog.Logger) (listener, error) {
	if lc.Protocol == config.UDP {
		l, err := udp.Listen(lc.Name, lc.Address, udpSettings(lc, uc, u), log)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return l, nil
	}
	l, err := proxy.Listen(lc.Name, lc.Network, lc.Address, settings(lc, uc, u), log)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// udpSettings maps a udp listener's config. Passive health (OnHostError)
// is wired where the health package is.
func udpSettings(lc *config.Listener, uc *config.Upstream, u *pool.Upstream) *udp.Settings {
	return &udp.Settings{
		Upstream:       u,
		IdleTimeout:    lc.IdleTimeout.D(),
		Responses:      lc.Responses,
		MaxSessions:    lc.MaxSessions,
		HashSourcePort: uc.HashKey == config.SourceIPPort,
	}
}
