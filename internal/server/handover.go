package server

import (
	"fmt"
	"net"
	"os"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
)

// Inheritor hands out listening sockets a previous l4lb passed on in an
// upgrade (package upgrade satisfies it).
type Inheritor interface {
	// Take returns the socket bound for network ("tcp", "unix", "udp") and
	// address as the config spells them, or nil. The caller owns it.
	Take(network, address string) *os.File
}

// Inherit makes Bind serve on the sockets in, where it has one for a
// listener's address, instead of binding a new one. Call it before Bind.
func (s *Server) Inherit(in Inheritor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inherit = in
}

// Socket is one listener's socket, named as the config names it.
type Socket struct {
	Network, Address string
	File             *os.File // a duplicate; the caller closes it
}

// Sockets duplicates every listener's socket for a new process to serve on
// (an upgrade). The caller closes the files once the new process has them.
func (s *Server) Sockets() ([]Socket, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Socket
	for _, rl := range s.lns {
		var f *os.File
		var err error
		if rl.udp != nil {
			f, err = rl.udp.File()
		} else {
			f, err = rl.tcp.File()
		}
		if err != nil {
			for _, so := range out {
				so.File.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", rl.lc.Name, err)
		}
		out = append(out, Socket{Network: rl.lc.Network, Address: rl.lc.Address, File: f})
	}
	return out, nil
}

// takeInherited returns the inherited socket for lc, or nil. s.mu held.
func (s *Server) takeInherited(lc *config.Listener) *os.File {
	if s.inherit == nil {
		return nil
	}
	return s.inherit.Take(lc.Network, lc.Address)
}

// listenInherited builds lc's listener on the inherited socket f, which it
// owns from now on. s.mu held.
func (s *Server) listenInherited(lc *config.Listener, f *os.File) (*runningListener, error) {
	defer f.Close() // net.File* duplicate it
	rl := &runningListener{lc: lc}
	if lc.Protocol == config.UDP {
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return nil, fmt.Errorf("listener %s: inherited socket: %w", lc.Name, err)
		}
		c, ok := pc.(*net.UDPConn)
		if !ok {
			pc.Close()
			return nil, fmt.Errorf("listener %s: inherited socket is %T, not UDP", lc.Name, pc)
		}
		if rl.udp, err = udp.ListenFrom(lc.Name, c, s.udpSettings(lc), s.log); err != nil {
			return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		rl.eng = rl.udp
	} else {
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("listener %s: inherited socket: %w", lc.Name, err)
		}
		rl.tcp = proxy.ListenFrom(lc.Name, ln, s.settings(lc), s.log)
		rl.eng = rl.tcp
	}
	s.log.Info().Str(logkey.Listener, lc.Name).Str(logkey.Address, rl.eng.Addr().String()).
		Str(logkey.Upstream, lc.Upstream).Bool("inherited", true).Msg("listening")
	return rl, nil
}
