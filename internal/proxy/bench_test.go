package proxy

import (
	"io"
	"net"
	"syscall"
	"testing"
)

// BenchmarkConnection: one client connection per op through the listener
// to an echo backend: accept, admit, pick, dial, one byte each way, close.
// allocs/op counts the whole process (client and backend included); the
// cpu-µs/op figure is the process's CPU per connection.
func BenchmarkConnection(b *testing.B) {
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer bln.Close()
	go func() {
		for {
			c, err := bln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	r := start(b, defaults(upstream(b, []string{bln.Addr().String()})))
	one := []byte{1}
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuSeconds()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric((cpuSeconds()-cpu)*1e6/float64(b.N), "cpu-µs/op")
	b.StopTimer()
	r.shutdown(b)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
