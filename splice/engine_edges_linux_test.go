// Edge cases of the engine's read rules and timers, first written by a
// review of the engine: each failed on it before the fix it names.
package splice

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEngineUnixSCMRights: a unix stream peer that passes an fd: the read
// stops after that skb (short) with more bytes queued.
func TestEngineUnixSCMRights(t *testing.T) {
	client, server := startUnix(t, "unix")
	pings(t, client, server)
	f, _ := os.Open("/dev/null")
	defer f.Close()
	oob := unix.UnixRights(int(f.Fd()))
	// Two messages in one go: "abc"+fd, then "def".
	if _, _, err := client.WriteMsgUnix([]byte("abc"), oob, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("def")); err != nil {
		t.Fatal(err)
	}
	want := []byte("abcdef")
	got := []byte{}
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < len(want) {
		n, err := server.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("server got %q, then %v", got, err)
		}
	}
}

// TestEngineUnixPacket: *net.UnixConn of type SOCK_SEQPACKET: each read
// returns one record, so a short read does not mean the queue is empty.
func TestEngineUnixPacket(t *testing.T) {
	client, server := startUnix(t, "unixpacket")
	// Queue many records back to back.
	for i := 0; i < 50; i++ {
		if _, err := client.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := 0; i < 50; i++ {
		n, err := server.Read(buf)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		_ = n
	}
}

func TestEngineUnixPacketQueued(t *testing.T) {
	client, a := unixPair(t, "unixpacket")
	b, server := unixPair(t, "unixpacket")
	defer client.Close()
	defer server.Close()
	for i := 0; i < 5; i++ {
		client.Write([]byte{byte(i)})
	}
	s := New(a, b, Options{})
	res := make(chan Result, 1)
	s.Start(func(r Result) { res <- r })
	defer s.Abort("cleanup")
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := 0; i < 5; i++ {
		n, err := server.Read(buf)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		t.Logf("rec %d: %v", i, buf[:n])
	}
}

func TestEngineUnixOOB(t *testing.T) {
	client, server := startUnix(t, "unix")
	pings(t, client, server)
	rc, _ := client.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.Send(int(fd), []byte("abcX"), unix.MSG_OOB)
		if serr == nil {
			_, serr = unix.Write(int(fd), []byte("def"))
		}
	})
	if serr != nil {
		t.Skip(serr)
	}
	got := []byte{}
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < 6 {
		n, err := server.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("server got %q, then %v", got, err)
		}
	}
	t.Logf("got %q", got)
}

func TestEngineUnixPacketBlocked(t *testing.T) {
	client, server := startUnix(t, "unixpacket")
	rec := make([]byte, 1000)
	buf := make([]byte, 4096)
	for i := 0; i < 3; i++ {
		client.Write(rec[:10])
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := server.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	// Server stops reading; client writes until it blocks.
	sent := 0
	for {
		client.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := client.Write(rec); err != nil {
			break
		}
		sent++
	}
	t.Logf("sent %d records before blocking", sent)
	client.SetWriteDeadline(time.Time{})
	got := 0
	for got < sent {
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := server.Read(buf); err != nil {
			t.Fatalf("got %d of %d records: %v", got, sent, err)
		}
		got++
	}
}

// TestEngineHugeIdle: an IdleTimeout meant as "never" overflows l.now+idle.
func TestEngineHugeIdle(t *testing.T) {
	st := startPair(t, Options{IdleTimeout: time.Duration(1<<63 - 1)})
	select {
	case r := <-st.res:
		t.Fatalf("session ended at once: %v", r.End)
	case <-time.After(300 * time.Millisecond):
	}
	st.exchange(t, []byte("x"))
}

// unixPair returns both ends of a fresh unix connection of network ("unix"
// for a stream, "unixpacket" for seqpacket): the dialed one and the
// accepted one.
func unixPair(t *testing.T, network string) (dialed, accepted *net.UnixConn) {
	t.Helper()
	ln, err := net.Listen(network, filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c.(*net.UnixConn), s.(*net.UnixConn)
}

// startUnix starts an engine session between two fresh unix connections of
// network and returns the outer ends: the client's and the server's. The
// session and the connections are cleaned up when the test ends.
// pings sends three small messages through the session and reads them
// back, so that the flow is in small mode (read/write) when the test's own
// traffic starts.
func pings(t *testing.T, client, server *net.UnixConn) {
	t.Helper()
	for i := 0; i < 3; i++ {
		client.Write([]byte("ping"))
		buf := make([]byte, 4)
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
	}
}

func startUnix(t *testing.T, network string) (client, server *net.UnixConn) {
	t.Helper()
	client, a := unixPair(t, network)
	b, server := unixPair(t, network)
	s := New(a, b, Options{})
	s.Start(func(Result) {})
	t.Cleanup(func() {
		client.Close()
		server.Close()
		s.Abort("cleanup")
	})
	return client, server
}
