package server

import (
	"context"
	"fmt"
	"time"
)

// Host addresses given as name:port are resolved when an edit is made (and
// again at each replay of the journal: start, reload, a fleet journal).
// That is DNS, which can take seconds, so it is done before s.mu is taken:
// the drain loop, discovery updates, the health sink's view and Status all
// wait for s.mu, and a slow resolver must not hold them up. The ops are
// resolved first (resolveOps), and applyOp then only looks the answers up.

// resolveTimeout bounds the resolution of one address.
const resolveTimeout = 5 * time.Second

// resolution is what one address resolved to, or why it did not.
type resolution struct {
	network, dial string
	err           error
}

// resolved holds the resolutions of the addresses of some ops, by address
// as written.
type resolved map[string]resolution

// lookup is the resolver applyOp uses: it answers from r only. An address
// missing from r is a bug (its op was not passed to resolveOps); it is
// refused rather than resolved under the lock.
func (r resolved) lookup(addr string) (string, string, error) {
	x, ok := r[addr]
	if !ok {
		return "", "", fmt.Errorf("%q was not resolved before the edit (a bug: please report it)", addr)
	}
	return x.network, x.dial, x.err
}

// resolveOps resolves every host address that ops name, each distinct one
// once. It must be called without s.mu. A failure is kept, not returned:
// applyOp reports it in its place (after the checks that come first, such
// as an unknown pool).
func (s *Server) resolveOps(ops []op) resolved {
	r := resolved{}
	add := func(addr string) {
		if _, ok := r[addr]; ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		network, dial, err := s.resolveHost(ctx, addr)
		cancel()
		r[addr] = resolution{network, dial, err}
	}
	for _, o := range ops {
		switch {
		case o.Op == opAddHost && o.HostSpec != nil:
			add(o.HostSpec.Address)
		case o.Op == opPutUpstream && o.Body != nil:
			for _, p := range o.Body.Pools {
				for _, h := range p.Hosts {
					add(h.Address)
				}
			}
		}
	}
	return r
}
