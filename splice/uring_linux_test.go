package splice

import (
	"bytes"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/uring"
)

// ringCounts sums the running engine's ring counters.
func ringCounts() (sent, full uint64) {
	if e := engineCur.Load(); e != nil {
		for _, l := range e.loops {
			sent += l.ringSent.Load()
			full += l.ringFull.Load()
		}
	}
	return sent, full
}

// needRing skips when this machine's kernel refuses io_uring (the engine
// then writes with write(2), which every other test covers), and checks
// that the engine batches its writes when it can.
func needRing(t *testing.T) {
	t.Helper()
	if os.Getenv("L4LB_IO_URING") == "0" {
		t.Skip("L4LB_IO_URING=0: this run tests the write(2) path")
	}
	if err := uring.Available(); err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	if got := RingWrites(); got != "io_uring" {
		t.Fatalf("RingWrites() = %q on a kernel that allows io_uring", got)
	}
}

// TestRingWritesSmallMessages: in small-message mode both directions'
// writes go through the loop's io_uring, and every byte arrives in order.
func TestRingWritesSmallMessages(t *testing.T) {
	if os.Getenv("L4LB_IO_URING") == "0" {
		warmEngine(t)
		if got := RingWrites(); !strings.HasPrefix(got, "write(2): L4LB_IO_URING=0") {
			t.Fatalf("RingWrites() = %q with L4LB_IO_URING=0", got)
		}
		for _, l := range engineCur.Load().loops {
			if l.ring != nil {
				t.Fatal("a loop has a ring with L4LB_IO_URING=0")
			}
		}
		return
	}
	needRing(t)
	st := startPair(t, Options{})
	before, _ := ringCounts()
	const rounds = 100
	for i := 0; i < rounds; i++ {
		st.exchange(t, []byte(strings.Repeat(string(rune('a'+i%26)), 1+i)))
	}
	if after, _ := ringCounts(); after-before < 2*rounds {
		t.Fatalf("%d sends through the ring for %d exchanges, want at least %d", after-before, rounds, 2*rounds)
	}
	st.client.CloseWrite()
	st.server.CloseWrite()
	if r := st.wait(t, 5*time.Second); r.End != EndClosed || r.AToB != r.BToA || r.AToB != rounds*(rounds+1)/2 {
		t.Fatalf("result %+v", r)
	}
}

// TestRingSendFindsDestinationFull: a send that finds the destination's
// buffer full (EAGAIN from the ring) waits for room and loses nothing.
func TestRingSendFindsDestinationFull(t *testing.T) {
	needRing(t)
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	b.SetWriteBuffer(4096)
	server.SetReadBuffer(4096)
	sess := New(a, b, Options{})
	res := make(chan Result, 1)
	sess.Start(func(r Result) { res <- r })
	t.Cleanup(func() {
		client.Close()
		server.Close()
		sess.Abort("test cleanup")
	})
	_, full0 := ringCounts()
	var sent bytes.Buffer
	msg := make([]byte, 1000)
	// One message at a time, each once the loop has sent the one before
	// (or found the destination full), so every read is short and the
	// flow stays in small-message mode.
	for i := 0; ; i++ {
		if i == 5000 {
			t.Fatal("5000 messages sent and the destination never full")
		}
		for j := range msg {
			msg[j] = byte(i + j)
		}
		s0, _ := ringCounts()
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		sent.Write(msg)
		deadline := time.Now().Add(5 * time.Second)
		for {
			s, f := ringCounts()
			if f > full0 {
				goto full
			}
			if s > s0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %d: no send completed within 5 s", i)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
full:
	client.CloseWrite()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("server got %d bytes (%v), want the %d sent, unaltered", len(got), err, sent.Len())
	}
	server.CloseWrite()
	select {
	case r := <-res:
		if r.End != EndClosed || r.AToB != uint64(sent.Len()) {
			t.Fatalf("result %+v, want closed with %d bytes", r, sent.Len())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session still running")
	}
}

// TestIdleHoldsNoBuffer: once its messages are written, an idle session
// holds no small-message buffer (16 KiB a direction), with the ring or
// without: 300 idle sessions grow the heap by far less than one buffer
// each, once two collections have emptied the buffer pool.
func TestIdleHoldsNoBuffer(t *testing.T) {
	warmEngine(t)
	const n = 300
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	sts := make([]*started, n)
	for i := range sts {
		sts[i] = startPair(t, Options{})
		sts[i].exchange(t, []byte("ping"))
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapInuse) - int64(before.HeapInuse)
	if limit := int64(n * smallBuf / 4); grew > limit {
		t.Fatalf("%d idle sessions grew the heap by %d KiB (%d B each), want under %d KiB", n, grew>>10, grew/n, limit>>10)
	}
	t.Logf("%d idle sessions: heap grew %d KiB (%d B each)", n, grew>>10, grew/n)
	runtime.KeepAlive(sts)
}
