// Package pool holds the backends of l4lb and chooses among them.
//
// The model is
//
//	Upstream ──> Pools (ordered by Priority) ──> Hosts (weighted)
//
// A Host is one backend address. It is created once and kept for the life of the
// process, even when the pools around it are rebuilt, so its state, fail count and
// connection counters survive live edits and reloads:
//
//	redisA := pool.NewHost("", "tcp", "10.0.0.1:6379", 5) // id defaults to the address
//	redisB := pool.NewHost("", "tcp", "10.0.0.2:6379", 1)
//	spare := pool.NewHost("spare", "unix", "/run/redis/spare.sock", 1)
//
// A Pool is an immutable, named group of hosts with a priority (lower is used
// first) and a selection Method. An Upstream is an ordered set of pools published
// as an immutable snapshot through an atomic pointer: readers never lock, and
// an edit builds a new slice and calls SetPools (copy on write):
//
//	primary, _ := pool.NewPool("primary", 0, pool.MethodRoundRobin, []*pool.Host{redisA, redisB})
//	backup, _ := pool.NewPool("backup", 1, pool.MethodRoundRobin, []*pool.Host{spare})
//	up := pool.NewUpstream("redis", []*pool.Pool{primary, backup}, pool.AllDownReject)
//
// On each new connection the proxy asks the upstream for a host. The skip
// function excludes hosts already tried for this connection, so a tries loop
// walks the hosts of the first pool and then falls through to the next one:
//
//	tried := make([]*pool.Host, 0, tries)
//	skip := func(h *pool.Host) bool { return slices.Contains(tried, h) }
//	for range tries {
//		_, h := up.Pick(key, skip)
//		if h == nil {
//			break // nothing left to try
//		}
//		tried = append(tried, h)
//		if err := dial(h); err != nil {
//			h.ConnectFailed(err.Error(), time.Now())
//			continue
//		}
//		h.ConnOpened()
//		defer h.ConnClosed(toHost, fromHost)
//		...
//	}
//
// Pick takes no lock beyond a per-pool selector mutex held for one pass over
// the pool's hosts, and does not allocate.
//
// # States
//
// A host keeps two things apart, as HAProxy does: its health (up or down, set
// by health checks and passive health through SetHealth) and its admin state
// (none, manual_down or draining, set by an operator through SetAdmin). State
// is the effective state: the admin state when one is set, else the health.
// So a check never revives a host an operator took out, and a manual up of a
// host whose checks say down leaves it down. The health keeps being recorded
// underneath (Healthy, HostStats.Healthy). The reason and Since describe the
// last change of the effective state. SetState is the older one-state API,
// kept as a wrapper.
//
// Only an up host with a weight above zero is Usable and receives new
// connections. Failover follows usability: when no host of the
// first pool is usable the next pool is used, and traffic fails back as soon as
// a host of the first pool is up again. With AllDownTryAll an upstream whose
// hosts are all down still picks among its down hosts (never manual_down or
// draining ones, never weight 0), on the theory that a health check can be
// wrong and a refused connection is no worse than a rejected one.
//
// # Slow start
//
// With SetSlowStart(d), a host that comes back up (from down or manual_down)
// ramps its effective weight linearly from a tenth of its weight (at least 1)
// to its weight over d, so a cold cache or a freshly started process is not
// handed its full share at once. The ramp end is an atomic on the host; Pick
// reads the clock only while some host ramps, and still does not allocate.
//
// # Methods
//
// Each pool has a Method (the upstream's, unless the pool overrides it). All
// of them apply the same rules: only usable hosts (with AllDownTryAll, down
// ones too), never weight 0, full or skipped hosts, and the slow start
// weight in place of the weight.
//
//   - round_robin: smooth weighted round robin, as nginx does it.
//   - least_conn: fewest active connections relative to the effective
//     weight; hosts tied for least share by smooth WRR, so with short
//     connections it behaves as round_robin.
//   - random2: two distinct hosts drawn at random in proportion to weight,
//     the one with fewer active connections relative to weight wins.
//   - fastest: the lowest connect time average. The caller reports each
//     successful connect with Host.ObserveConnect (an EWMA, alpha 1/8); a
//     host not measured yet, or back up since, counts as fastest so it is
//     probed. Speed comes first: hosts within 1/8 of the fastest count as
//     equally fast and share by weight; slower hosts get nothing while they
//     are usable, which makes fastest a failover to the next nearest site.
//   - hash: the client keeps its host ("IP sticky sessions"). The key
//     passed to Pick is HashKey of the client address (source_ip, or
//     source_ip_port), the same in every l4lb process.
//
// The hash method uses a weighted Maglev table (65537 slots, or 100 per host,
// a prime) rather than a ring of virtual nodes: a pick is one lookup
// whatever the number of hosts, weights come out exact to a slot, and the
// table costs 4 bytes a slot. The table depends only on the hosts' IDs and
// weights, not on their order, on time or on randomness, so l4lb instances
// behind ECMP with the same hosts send a client to the same host. When a
// host leaves the pool, its keys move and about half a percent of the
// others' (Maglev's price for its balance; a ring moves none of them but
// needs hundreds of points per host to balance as well); when it comes back,
// every key returns. When a host is down, full, of weight 0 or already
// tried, its keys walk on to the next slot's host, so they spread over the
// others and no other key moves. A host in slow start takes back a growing
// part of its keys, the same keys first on every instance, and keeps them.
//
// # What this package does not do
//
// It does not dial, run health checks, count failures over time windows,
// log, or read configuration. Those belong to its callers, which report into a
// Host through SetHealth, SetAdmin, ConnectFailed, ObserveConnect and the
// connection counters. It does not hash client addresses by itself either:
// the caller passes HashKey's result to Pick. It imports
// only the standard library, and a test keeps it so.
package pool
