package pool

import (
	"fmt"
	"testing"
	"time"
)

// benchUpstream builds a primary pool of n hosts with mixed weights and a
// one-host backup pool.
func benchUpstream(b *testing.B, n int) (*Upstream, []*Host) {
	hs := make([]*Host, n)
	for i := range hs {
		hs[i] = NewHost("", "tcp", fmt.Sprintf("10.0.%d.%d:6379", i/256, i%256), 1+i%5)
	}
	backup := NewHost("", "tcp", "10.1.0.1:6379", 1)
	u := NewUpstream("bench", []*Pool{
		mustPool(b, "primary", 0, hs),
		mustPool(b, "backup", 1, []*Host{backup}),
	}, AllDownTryAll)
	return u, hs
}

func BenchmarkUpstreamPick(b *testing.B) {
	for _, n := range []int{2, 16, 256} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			u, hs := benchUpstream(b, n)
			first := hs[0]
			// The tries loop's closure, built once per connection by the caller.
			skip := func(h *Host) bool { return h == first }
			b.ReportAllocs()
			for b.Loop() {
				if _, h := u.Pick(0, skip); h == nil {
					b.Fatal("no host")
				}
			}
		})
	}
}

// Every host in a slow start ramp: the pick reads the clock once per host.
func BenchmarkUpstreamPickSlowStart(b *testing.B) {
	for _, n := range []int{2, 16, 256} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			u, hs := benchUpstream(b, n)
			for _, h := range hs {
				h.SetSlowStart(time.Hour)
				h.SetHealth(false, "bench")
				h.SetHealth(true, "bench")
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, h := u.Pick(0, nil); h == nil {
					b.Fatal("no host")
				}
			}
		})
	}
}

// All hosts of the primary pool down: the pick falls over to the backup.
func BenchmarkUpstreamPickFailover(b *testing.B) {
	for _, n := range []int{2, 16, 256} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			u, hs := benchUpstream(b, n)
			for _, h := range hs {
				h.SetState(StateDown, "bench", false)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, h := u.Pick(0, nil); h == nil {
					b.Fatal("no host")
				}
			}
		})
	}
}

func BenchmarkUpstreamPickParallel(b *testing.B) {
	for _, n := range []int{2, 16, 256} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			u, _ := benchUpstream(b, n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, h := u.Pick(0, nil); h == nil {
						b.Error("no host")
						return
					}
				}
			})
		})
	}
}

// TestPickDoesNotAllocate holds the benchmark's promise in the ordinary test
// run, for every method.
func TestPickDoesNotAllocate(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			hs := hostsW(1, 2, 3)
			u := NewUpstream("u", []*Pool{methodPool(t, "p", 0, m, hs[:2]), methodPool(t, "q", 1, m, hs[2:])}, AllDownTryAll)
			skip := func(h *Host) bool { return h == hs[0] }
			u.Pick(0, skip) // first pick sizes the selector state
			key := uint64(0)
			for _, tc := range []struct {
				name  string
				setup func()
			}{
				{"healthy", func() {}},
				{"slow start", func() {
					hs[1].SetSlowStart(time.Hour)
					hs[1].SetHealth(false, "")
					hs[1].SetHealth(true, "")
				}},
				{"failover", func() { hs[0].SetState(StateDown, "", false); hs[1].SetState(StateDown, "", false) }},
				{"try all", func() { hs[2].SetState(StateDown, "", false) }},
			} {
				tc.setup()
				if a := testing.AllocsPerRun(100, func() { key++; u.Pick(key, skip) }); a != 0 {
					t.Errorf("%s: %v allocs per Pick, want 0", tc.name, a)
				}
			}
		})
	}
}

// BenchmarkMethodPick measures one pick per method on a pool of n hosts with
// mixed weights and a few connections open on each. Keys vary as client
// addresses do.
func BenchmarkMethodPick(b *testing.B) {
	for _, m := range methods {
		for _, n := range []int{2, 16, 256} {
			b.Run(fmt.Sprintf("%s/hosts=%d", m, n), func(b *testing.B) {
				hs := make([]*Host, n)
				for i := range hs {
					hs[i] = NewHost("", "tcp", fmt.Sprintf("10.0.%d.%d:6379", i/256, i%256), 1+i%5)
					for range i % 7 {
						hs[i].ConnOpened()
					}
					hs[i].ObserveConnect(time.Duration(500+i%13) * time.Microsecond)
				}
				u := NewUpstream("bench", []*Pool{methodPool(b, "primary", 0, m, hs)}, AllDownReject)
				u.Pick(0, nil) // builds the hash table
				key := uint64(0)
				b.ReportAllocs()
				for b.Loop() {
					key++
					if _, h := u.Pick(key*0x9e3779b97f4a7c15, nil); h == nil {
						b.Fatal("no host")
					}
				}
			})
		}
	}
}
