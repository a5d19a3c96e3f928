// Package metrics serves l4lb's counters as Prometheus text.
//
// Nothing here sits on the connection path. The listeners, hosts and server
// already keep their counters in atomics (proxy.Listener.Stats,
// udp.Listener.Stats, pool.Host.Stats, server.Status); a Collector reads
// them when Prometheus scrapes and turns them into metrics then. A scrape
// costs a walk over the hosts and listeners; a connection costs nothing more
// than it did without metrics.
//
// Use:
//
//	reg := metrics.NewRegistry(srv, version) // srv satisfies Source
//	ms, err := metrics.Listen("127.0.0.1:9790", reg, log)
//	// ...
//	err = ms.Run(ctx) // serves /metrics and /healthz until ctx ends
//
// The metric names, their labels and what they count are documented in
// docs/METRICS.md; that file and the Collector must change together.
//
// What the package does not do: keep history (Prometheus does), count
// anything itself, push, or serve anything but /metrics and /healthz.
// Consul discovery is read the same way (the l4lb_discovery_* gauges, from
// the status's discovery list); the fleet store has no metrics of its own:
// its state is the status's store line.
package metrics
