package udp

import (
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRelay measures request/response over loopback, straight to an
// echo backend and through a Listener, one client in lockstep (latency) and
// many in parallel (rate). It reports the p99 round trip besides ns/op, and
// cpu-µs/op: the CPU time (user + system) of the whole process per round
// trip, which on a shared machine is steadier than ns/op. allocs/op and
// cpu-µs/op include the clients and the backend, as they run in-process:
// relay minus direct is the listener's share.
//
//	go test -run - -bench Relay -benchtime 100000x ./internal/udp/
func BenchmarkRelay(b *testing.B) {
	be := newBackend(b, "127.0.0.1:0", 0, echo)
	r := start(b, &Settings{Upstream: upstream(b, hosts(be.addr())), IdleTimeout: time.Minute})
	for _, tc := range []struct{ name, addr string }{{"direct", be.addr()}, {"relay", r.addr}} {
		b.Run(tc.name+"/serial", func(b *testing.B) {
			c := client(b, tc.addr)
			req, buf := make([]byte, 64), make([]byte, 2048)
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := exchange(c, req, buf); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			reportCPU(b, cpu0)
			reportP99(b, lat)
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8) // 16 clients on 2 cores
			cpu0 := cpuTime()
			defer reportCPU(b, cpu0)
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr)))
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				req, buf := make([]byte, 64), make([]byte, 2048)
				for pb.Next() {
					if err := exchange(c, req, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// exchange sends req and waits for its echo, resending after a loss as a
// DNS client would.
func exchange(c *net.UDPConn, req, buf []byte) error {
	for try := 0; ; try++ {
		if _, err := c.Write(req); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := c.Read(buf)
		if err == nil || try == 3 {
			return err
		}
	}
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, since time.Duration) {
	b.ReportMetric(float64(cpuTime()-since)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}

func reportP99(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}
