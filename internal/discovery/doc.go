// Package discovery follows Consul services for l4lb's pools.
//
// A Watch names what a pool follows: a service, the tags its instances must
// carry, a datacenter, whether only passing instances count, and an optional
// "near" node. Pools that follow the same Watch share one watcher, so a
// service is asked for once however many pools use it.
//
// Each watcher runs a blocking query on Consul's health endpoint
// (/v1/health/service/NAME) in a loop, through one api.Client built by New:
//
//	d, err := discovery.New(cfg, sink, log) // starts nothing
//	d.SetWatches(watches)                   // what to follow; may change later
//	go d.Run(ctx)                           // returns once every watcher ended
//	<-d.Ready()                             // every first answer (or the copy on disk)
//
// Every answer whose set of instances changed is handed to the Sink, which
// makes the pools match (package server), and written to a last-known-good
// file under Config.StateDir. The loop follows Consul's rules for blocking
// queries: the index is reset to 0 when it goes backwards and clamped to at
// least 1; a query that returns at once with nothing new is rate-limited;
// errors (5xx, refused, reset, a deadline) are retried with capped
// exponential backoff and jitter; every request has its own deadline of
// wait + wait/16 (the jitter Consul adds) + a margin, because Consul's own
// client has no timeout and waits forever on a stuck agent.
//
// An empty answer does not wipe a set that was serving at once: it must be
// confirmed (see Config.EmptyGrace), so a flapping registry cannot
// black-hole a service.
//
// What this package does not do: it does not register anything in Consul,
// resolve host names (the sink does), run health checks of its own, or read
// Consul KV. It never takes the sink's locks: it calls the Sink from its
// watcher goroutines and holds no lock of its own while doing so.
package discovery
