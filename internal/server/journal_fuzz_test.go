package server

import (
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/rs/zerolog"
)

// fuzzTOML is the config file the fuzzed journals are replayed over.
const fuzzTOML = `
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"

[[upstream.u.pool]]
name = "p"
hosts = [ { address = "127.0.0.1:7001", id = "a" } ]

[[upstream.v.pool]]
name = "q"
hosts = [ { address = "127.0.0.1:7002", id = "b" } ]
`

var (
	fuzzOnce   sync.Once
	fuzzServer *Server
	fuzzErr    error
)

// resolvesNames reports an op with a host address that replay would look up
// in DNS: not hermetic (and slow), so such inputs are not replayed.
func resolvesNames(o op) bool {
	var addrs []string
	if o.HostSpec != nil {
		addrs = append(addrs, o.HostSpec.Address)
	}
	if o.Body != nil {
		for _, p := range o.Body.Pools {
			for _, h := range p.Hosts {
				addrs = append(addrs, h.Address)
			}
		}
	}
	for _, a := range addrs {
		if strings.HasPrefix(a, "unix:") {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			continue // refused before any lookup
		}
		if _, err := netip.ParseAddr(host); err != nil {
			return true
		}
	}
	return false
}

// FuzzDecodeJournal feeds bytes to decodeJournal, the parser of the edit
// journal: the file in state_dir that l4lb reads at start, and in fleet mode
// the value in Consul KV that every instance reads and any other instance
// (or anyone who may write that key) wrote. Properties:
//
//   - it never panics, and returns a journal (version 1) or an error, not both;
//   - what it accepts survives encodeJournal (what an instance writes back
//     to the store after adopting a journal) and decodes to the same ops;
//   - replaying the decoded ops over a config, as start, reload and the
//     fleet watch do, never panics, and is deterministic (op.check refuses
//     an op without its payload or with a value the API refuses).
//
// Seeds, one per edge case, are below and in testdata/fuzz/FuzzDecodeJournal.
func FuzzDecodeJournal(f *testing.F) {
	f.Add([]byte(``))                                                                                                    // empty file
	f.Add([]byte(`null`))                                                                                                // JSON null: version 0
	f.Add([]byte(`{}`))                                                                                                  // no version
	f.Add([]byte(`{"version":2,"ops":[]}`))                                                                              // a future version: refused
	f.Add([]byte(`{"version":1}`))                                                                                       // no ops at all
	f.Add([]byte(`{"version":1,"ops":null}`))                                                                            // ops null
	f.Add([]byte(`{"version":1,"ops":{}}`))                                                                              // ops not an array
	f.Add([]byte(`{"version":1e30}`))                                                                                    // version out of int range
	f.Add([]byte(`{"version":1,"ops":[`))                                                                                // truncated
	f.Add([]byte(`{"version":2,"version":1,"ops":[]}`))                                                                  // duplicate key: the last wins
	f.Add([]byte(`{"VERSION":1,"OPS":[{"OP":"remove_host","UPSTREAM":"u","POOL":"p","HOST":"a"}]}`))                     // keys match case-insensitively
	f.Add([]byte(`{"version":1,"ops":[],"extra":{"x":1}}`))                                                              // unknown fields are ignored
	f.Add([]byte(`{"version":1,"ops":[{"op":"explode","upstream":"u","pool":"p","host":"a"}]}`))                         // unknown op: dropped by replay
	f.Add([]byte(`{"version":1,"ops":[{"op":"host_action","upstream":"u","pool":"p","host":"a","action":"sideways"}]}`)) // unknown action
	f.Add([]byte(`{"version":1,"ops":[{"op":"add_host","upstream":"u","pool":"p","host_spec":{"id":"c","address":"127.0.0.1:7003","weight":2}},` +
		`{"op":"patch_host","upstream":"u","pool":"p","host":"c","weight":5},{"op":"host_action","upstream":"u","pool":"p","host":"a","action":"down"},` +
		`{"op":"remove_host","upstream":"u","pool":"p","host":"a"}]}`)) // a real journal
	f.Add([]byte(`{"version":1,"ops":[{"op":"put_upstream","upstream":"w","body":{"name":"w","pools":[{"name":"r","priority":1,"hosts":[{"id":"d","address":"unix:/run/d.sock","weight":1}]}]}},` +
		`{"op":"delete_upstream","upstream":"v"},{"op":"delete_upstream","upstream":"u"}]}`)) // put, delete, and a delete refused (u has a listener)
	f.Add([]byte(`{"version":1,"ops":[{"op":"add_pool","upstream":"u","pool_spec":{"name":"p2","priority":2,"method":"least_conn"}},` +
		`{"op":"patch_pool","upstream":"u","pool":"p2","pool_patch":{"method":"no_such_method"}},{"op":"delete_pool","upstream":"u","pool":"p2"}]}`)) // pools; an unknown method refused
	f.Add([]byte(`{"version":1,"ops":[],"store":{"kind":"consul","key":"l4lb/edits","index":42,"time":"2026-01-02T03:04:05Z"}}`))           // a fleet last-known-good copy
	f.Add([]byte(`{"version":1,"ops":[],"store":{"time":"yesterday"}}`))                                                                    // a bad time in the store meta
	f.Add([]byte("{\"version\":1,\"ops\":[{\"op\":\"remove_host\",\"upstream\":\"u\",\"pool\":\"p\",\"host\":\"\xff\xfe\"}]}"))             // invalid UTF-8
	f.Add([]byte(`{"version":1,"ops":[{"op":"add_host","upstream":"u","pool":"p","host_spec":{"address":"127.0.0.1:7004","weight":-5}}]}`)) // negative weight: refused on replay, as by the API
	f.Add([]byte(`{"version":1,"ops":[{"op":"add_pool","upstream":"u"}]}`))                                                                 // missing pool_spec: crashed replay before op.check
	f.Add([]byte(`{"version":1,"ops":[{"op":"patch_host","upstream":"u","pool":"p","host":"a"}]}`))                                         // missing weight: crashed replay before op.check
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := decodeJournal(b)
		if err != nil {
			if j != nil {
				t.Fatalf("decodeJournal returned a journal and an error (%v)", err)
			}
			return
		}
		if j == nil || j.Version != 1 {
			t.Fatalf("decodeJournal accepted %+v", j)
		}

		// Round trip through what the fleet store writes back.
		j2, err := decodeJournal(encodeJournal(j.Ops))
		if err != nil {
			t.Fatalf("re-decode of encodeJournal(%+v): %v", j.Ops, err)
		}
		if len(j.Ops) != 0 || len(j2.Ops) != 0 {
			if !reflect.DeepEqual(j.Ops, j2.Ops) {
				t.Fatalf("round trip changed the ops:\n%+v\n%+v", j.Ops, j2.Ops)
			}
		}

		for _, o := range j.Ops {
			if resolvesNames(o) {
				t.Skip("an address needs DNS: not replayed")
			}
		}
		fuzzOnce.Do(func() {
			cfg, err := config.Parse("fuzz.toml", []byte(fuzzTOML))
			if err != nil {
				fuzzErr = err
				return
			}
			fuzzServer, fuzzErr = New("", cfg, zerolog.Nop())
		})
		if fuzzErr != nil {
			t.Fatal(fuzzErr)
		}
		s := fuzzServer
		r := s.resolveOps(j.Ops) // IP literals only (names were skipped above)
		s.mu.Lock()
		defer s.mu.Unlock()
		sp1, kept1 := s.replay(specsFromConfig(s.cfg), j.Ops, r)
		sp2, kept2 := s.replay(specsFromConfig(s.cfg), j.Ops, r)
		if !reflect.DeepEqual(kept1, kept2) || len(sp1) != len(sp2) {
			t.Fatalf("replay is not deterministic: kept %d then %d ops", len(kept1), len(kept2))
		}
		if len(kept1) > len(j.Ops) {
			t.Fatalf("replay kept %d of %d ops", len(kept1), len(j.Ops))
		}
	})
}
