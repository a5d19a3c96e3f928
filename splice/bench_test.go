package splice

import (
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// cpuSeconds is the process's user+system CPU so far. Benchmarks report CPU
// per unit of work (client, server and session together: they share the
// process) because wall time is unreliable on a shared machine.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func benchRig(b *testing.B) (client, server *net.TCPConn, done func() Result) {
	client, a := tcpPair(b)
	bb, server := tcpPair(b)
	s := New(a, bb, Options{IdleTimeout: time.Minute})
	res := make(chan Result, 1)
	go func() { res <- s.Run() }()
	return client, server, func() Result {
		client.Close()
		server.Close()
		return <-res
	}
}

// BenchmarkPingPong: one small request and its reply through a session per
// op, the redis-benchmark pipeline-1 pattern.
func BenchmarkPingPong(b *testing.B) {
	for _, size := range []int{64, 4 << 10} {
		b.Run(byteSize(size), func(b *testing.B) {
			client, server, done := benchRig(b)
			defer done()
			go func() {
				buf := make([]byte, size)
				for {
					if _, err := io.ReadFull(server, buf); err != nil {
						return
					}
					if _, err := server.Write(buf); err != nil {
						return
					}
				}
			}()
			msg := make([]byte, size)
			buf := make([]byte, size)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuSeconds()
			for i := 0; i < b.N; i++ {
				if _, err := client.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(client, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric((cpuSeconds()-cpu)*1e6/float64(b.N), "cpu-µs/op")
		})
	}
}

// BenchmarkBulk: one direction streams; reports CPU seconds per GB moved
// (the whole process: writer, reader and session).
func BenchmarkBulk(b *testing.B) {
	client, server, done := benchRig(b)
	defer done()
	const chunk = 1 << 20
	b.SetBytes(chunk)
	got := make(chan int64)
	go func() {
		n, _ := io.Copy(io.Discard, server)
		got <- n
	}()
	msg := make([]byte, chunk)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuSeconds()
	for i := 0; i < b.N; i++ {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	client.CloseWrite()
	if n := <-got; n != int64(b.N)*chunk {
		b.Fatalf("moved %d of %d", n, int64(b.N)*chunk)
	}
	b.ReportMetric((cpuSeconds()-cpu)/(float64(b.N)*chunk/1e9), "cpu-s/GB")
}

func byteSize(n int) string {
	if n >= 1<<10 {
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}
