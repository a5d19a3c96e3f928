package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
)

func fdCount() int {
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	splice.DefaultPipes().Flush()
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// settle waits (bounded) for goroutines and fds to come back to at most
// the baseline plus slack, and reports what it found.
func settle(t *testing.T, g0, fd0 int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd := runtime.NumGoroutine(), fdCount()
		if g <= g0+2 && fd <= fd0+2 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: goroutines %d -> %d, fds %d -> %d", g0, g, fd0, fd)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type inproc struct {
	s    *server.Server
	path string
	addr string
	stop func()
}

func startInproc(t *testing.T, toml string) *inproc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	toml = fmt.Sprintf("[control]\nstate_dir = %q\n", filepath.Join(dir, "state")) + toml
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(path, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	ip := &inproc{s: s, path: path, addr: s.Listeners()[0].Addr().String()}
	ip.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(ip.stop)
	return ip
}

func echoCheck(c net.Conn, b []byte) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() { _, err := c.Write(b); errc <- err }()
	got := make([]byte, len(b))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, b) {
		return errors.New("bytes altered")
	}
	return nil
}

// TestSoak: churn with faults for a while (15s in CI; L4LB_SOAK=30m for the
// real soak): clients send random payloads through a pool where one host in
// four sits behind a relay that cuts connections with a reset after 64 KiB.
// No byte is ever altered (a cut connection got a prefix of its echo); fds
// and goroutines sampled all along do not grow.
func TestSoak(t *testing.T) {
	dur, err := soakDuration()
	if err != nil {
		t.Fatal(err)
	}
	every := time.Second
	if dur >= 10*time.Minute {
		every = 10 * time.Second
	}
	g0, fd0 := runtime.NumGoroutine(), fdCount()
	var conns, cut, bytesOK atomic.Int64
	type sample struct{ g, fd int }
	var samples []sample
	func() {
		echo, err := testbackend.Start(testbackend.Echo)
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Close()
		chaos, err := testbackend.StartChaos(&testbackend.Chaos{CutAfter: 64 << 10, CutRST: true}, echo.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer chaos.Close()
		ip := startInproc(t, fmt.Sprintf(`
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"

[upstream.u]
max_fails = 0

[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q, id = "clean", weight = 3 }, { address = %q, id = "chaos" } ]
`, echo.Addr(), chaos.Addr()))
		defer ip.stop()

		stop := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := mrand.New(mrand.NewPCG(uint64(w), 7))
				for {
					select {
					case <-stop:
						return
					default:
					}
					b := make([]byte, 1+rng.IntN(256<<10))
					rand.Read(b)
					n, err := echoPrefix(ip.addr, b)
					conns.Add(1)
					bytesOK.Add(int64(n))
					if err != nil {
						if errors.Is(err, errAltered) {
							errs <- err
							return
						}
						cut.Add(1)
					}
				}
			}(w)
		}
		deadline := time.After(dur)
		tick := time.NewTicker(every)
		defer tick.Stop()
	loop:
		for {
			select {
			case <-deadline:
				break loop
			case err := <-errs:
				close(stop)
				wg.Wait()
				t.Fatal(err)
			case <-tick.C:
				samples = append(samples, sample{runtime.NumGoroutine(), fdCount()})
			}
		}
		close(stop)
		wg.Wait()
	}()
	settle(t, g0, fd0)
	// Growth: the median of the last third against the first third.
	med := func(s []sample, f func(sample) int) int {
		v := make([]int, len(s))
		for i, x := range s {
			v[i] = f(x)
		}
		sort.Ints(v)
		return v[len(v)/2]
	}
	third := len(samples) / 3
	if third > 0 {
		first, last := samples[:third], samples[len(samples)-third:]
		gGrowth := med(last, func(s sample) int { return s.g }) - med(first, func(s sample) int { return s.g })
		fdGrowth := med(last, func(s sample) int { return s.fd }) - med(first, func(s sample) int { return s.fd })
		t.Logf("soak %v: %d connections (%d cut by the chaos relay), %d MiB echoed intact, 0 bytes altered; %d samples, goroutines %+d, fds %+d (last third vs first)",
			dur, conns.Load(), cut.Load(), bytesOK.Load()>>20, len(samples), gGrowth, fdGrowth)
		if gGrowth > 20 || fdGrowth > 20 {
			t.Errorf("resources grow during the soak: goroutines %+d, fds %+d", gGrowth, fdGrowth)
		}
	}
}

var errAltered = errors.New("bytes altered")

// echoPrefix sends b, half-closes, and reads the echo to EOF. It returns
// how many bytes came back intact; a cut connection must have returned a
// prefix of b, never different bytes.
func echoPrefix(addr string, b []byte) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() { c.Write(b); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if !bytes.Equal(got, b[:min(len(got), len(b))]) || len(got) > len(b) {
		return 0, errAltered
	}
	if err == nil && len(got) != len(b) {
		err = io.ErrUnexpectedEOF
	}
	return len(got), err
}
