package pool_test

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/l4lb/l4lb/pool"
)

func Example_upstream() {
	// Hosts live for the whole process; pools and upstreams are rebuilt around them.
	a := pool.NewHost("a", "tcp", "10.0.0.1:6379", 5)
	b := pool.NewHost("b", "tcp", "10.0.0.2:6379", 1)
	c := pool.NewHost("c", "tcp", "10.0.0.3:6379", 1)
	spare := pool.NewHost("spare", "unix", "/run/redis/spare.sock", 1)

	primary, err := pool.NewPool("primary", 0, pool.MethodRoundRobin, []*pool.Host{a, b, c})
	if err != nil {
		panic(err)
	}
	backup, err := pool.NewPool("backup", 1, pool.MethodRoundRobin, []*pool.Host{spare})
	if err != nil {
		panic(err)
	}
	// Insertion order does not matter: pools are used by priority.
	up := pool.NewUpstream("redis", []*pool.Pool{backup, primary}, pool.AllDownReject)

	// Smooth weighted round robin: weights 5,1,1 interleave, no bursts.
	var picks []string
	for range 7 {
		p, h := up.Pick(0, nil)
		picks = append(picks, p.Name+"/"+h.ID)
	}
	fmt.Println(strings.Join(picks, " "))

	// A host already tried for this connection is skipped.
	tried := a
	p, h := up.Pick(0, func(h *pool.Host) bool { return h == tried })
	fmt.Println("retry:", p.Name, h.ID)

	// When every primary host is down, traffic fails over to the backup...
	for _, h := range primary.Hosts {
		h.SetState(pool.StateDown, "connection refused", false)
	}
	p, h = up.Pick(0, nil)
	fmt.Println("failover:", p.Name, h.ID, h.Network, h.Address)

	// ...and fails back when a primary host recovers.
	b.SetState(pool.StateUp, "rise 2", false)
	p, h = up.Pick(0, nil)
	fmt.Println("failback:", p.Name, h.ID)

	// Output:
	// primary/a primary/a primary/b primary/a primary/c primary/a primary/a
	// retry: primary b
	// failover: backup spare unix /run/redis/spare.sock
	// failback: primary b
}

func Example_hash() {
	var hosts []*pool.Host
	for _, addr := range []string{"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"} {
		hosts = append(hosts, pool.NewHost("", "tcp", addr, 1))
	}
	p, err := pool.NewPool("redis", 0, pool.MethodHash, hosts)
	if err != nil {
		panic(err)
	}
	// The proxy hashes the client address (hash_key = "source_ip").
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	key := pool.HashKey(client, false)

	first := p.Pick(key, nil)
	again := p.Pick(pool.HashKey(netip.MustParseAddrPort("192.0.2.7:40001"), false), nil)
	fmt.Println("same host on a new connection:", first == again)

	// Its host goes down: the client moves, deterministically...
	first.SetHealth(false, "connection refused")
	other := p.Pick(key, nil)
	fmt.Println("moved while down:", other != first, other == p.Pick(key, nil))

	// ...and comes back when the host does.
	first.SetHealth(true, "rise 2")
	fmt.Println("back:", p.Pick(key, nil) == first)

	// Output:
	// same host on a new connection: true
	// moved while down: true true
	// back: true
}
