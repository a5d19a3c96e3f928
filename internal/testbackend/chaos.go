package testbackend

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Chaos is a relay that stands between l4lb and a backend and misbehaves
// on purpose: it delays each chunk, caps the bandwidth, and cuts each
// connection after a number of bytes with a FIN or a reset. The zero value
// of each field means "don't".
type Chaos struct {
	Delay     time.Duration // added before forwarding each chunk, each way
	BytesPerS int           // bandwidth cap per direction; 0 = none
	CutAfter  int64         // close both sides after this many bytes backend→client; 0 = never
	CutRST    bool          // cut with a reset (SO_LINGER 0) rather than a FIN

	cuts atomic.Int64

	ln   net.Listener
	to   string
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

// StartChaos starts a relay on 127.0.0.1:0 to the backend at to.
func StartChaos(c *Chaos, to string) (*Chaos, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c.ln, c.to, c.open = ln, to, map[net.Conn]struct{}{}
	c.wg.Add(1)
	go c.acceptLoop()
	return c, nil
}

// Addr returns the relay's address: point l4lb's host at it.
func (c *Chaos) Addr() string { return c.ln.Addr().String() }

// Cuts returns how many connections the relay has cut so far (CutAfter
// reached). A test that sends traffic through it can then tell a cut it
// caused from bytes lost elsewhere: each cut can explain at most one
// short or reset connection.
func (c *Chaos) Cuts() int64 { return c.cuts.Load() }

// Close stops the relay, cuts every connection and waits for its goroutines.
func (c *Chaos) Close() {
	c.ln.Close()
	c.mu.Lock()
	for conn := range c.open {
		conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *Chaos) track(conns ...net.Conn) {
	c.mu.Lock()
	for _, x := range conns {
		c.open[x] = struct{}{}
	}
	c.mu.Unlock()
}

func (c *Chaos) untrack(conns ...net.Conn) {
	c.mu.Lock()
	for _, x := range conns {
		delete(c.open, x)
	}
	c.mu.Unlock()
}

func (c *Chaos) acceptLoop() {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", c.to)
		if err != nil {
			in.Close()
			continue
		}
		c.track(in, out)
		c.wg.Add(1)
		go c.relay(in.(*net.TCPConn), out.(*net.TCPConn))
	}
}

// relay runs one connection: up (client→backend) in a goroutine, down here.
func (c *Chaos) relay(in, out *net.TCPConn) {
	defer c.wg.Done()
	defer c.untrack(in, out)
	var up sync.WaitGroup
	up.Add(1)
	go func() {
		defer up.Done()
		c.pump(out, in, 0)
		out.CloseWrite()
	}()
	cut := c.pump(in, out, c.CutAfter)
	if cut {
		c.cuts.Add(1)
	}
	if cut && c.CutRST {
		in.SetLinger(0)
		out.SetLinger(0)
		in.Close()
		out.Close()
	} else if cut {
		in.Close()
		out.Close()
	} else {
		in.CloseWrite()
	}
	up.Wait()
	in.Close()
	out.Close()
}

// pump copies src to dst with the delay and rate cap; it returns true when
// it stopped because limit bytes went through.
func (c *Chaos) pump(dst, src *net.TCPConn, limit int64) (cut bool) {
	buf := make([]byte, 16<<10)
	var sent int64
	start := time.Now()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if limit > 0 && sent+int64(n) >= limit {
				n = int(limit - sent)
				cut = true
			}
			if c.Delay > 0 {
				time.Sleep(c.Delay)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false
			}
			sent += int64(n)
			if c.BytesPerS > 0 {
				// Sleep until the average rate is back under the cap.
				if ahead := time.Duration(float64(sent)/float64(c.BytesPerS)*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			if cut {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}
