package proxy

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
)

// TestEndLogged: the end of a connection is handed to a goroutine exactly
// when its line will be written (see conn.done); endLogged must agree with
// the line endLine starts.
func TestEndLogged(t *testing.T) {
	at := func(lvl zerolog.Level) zerolog.Logger { return zerolog.New(io.Discard).Level(lvl) }
	access := func(lvl zerolog.Level) *zerolog.Logger { lg := at(lvl); return &lg }
	for _, tc := range []struct {
		name   string
		main   zerolog.Logger
		access *zerolog.Logger
		warn   bool
		want   bool
	}{
		{"info", at(zerolog.InfoLevel), nil, false, true},
		{"warn, clean end", at(zerolog.WarnLevel), nil, false, false},
		{"warn, error end", at(zerolog.WarnLevel), nil, true, true},
		{"error, error end", at(zerolog.ErrorLevel), nil, true, false},
		{"nop", zerolog.Nop(), nil, true, false},
		{"access log at info, main at error", at(zerolog.ErrorLevel), access(zerolog.InfoLevel), false, true},
		{"access log at warn, main at debug", at(zerolog.DebugLevel), access(zerolog.WarnLevel), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &Listener{log: tc.main}
			s := &Settings{Access: tc.access}
			if got := l.endLogged(s, tc.warn); got != tc.want {
				t.Errorf("endLogged = %v, want %v", got, tc.want)
			}
			cl := &clientInfo{}
			if got := l.endLine(s, cl, tc.warn).Enabled(); got != tc.want {
				t.Errorf("endLine enabled = %v, endLogged says %v", got, tc.want)
			}
		})
	}
}

// gateWriter blocks every Write once armed, until the gate opens: a log
// destination that has stalled (a full disk, a journald that does not read).
type gateWriter struct {
	armed   atomic.Bool
	gate    chan struct{}
	blocked chan struct{} // closed at the first Write that blocks
	once    sync.Once
}

func (w *gateWriter) Write(p []byte) (int, error) {
	if w.armed.Load() {
		w.once.Do(func() { close(w.blocked) })
		<-w.gate
	}
	return len(p), nil
}

// TestStalledLogStallsNoConnection: while the line of a connection that
// ended cannot be written, the engine loop that ran it goes on moving the
// bytes of every other connection.
func TestStalledLogStallsNoConnection(t *testing.T) {
	b := testbackend.New(t, testbackend.Echo)
	w := &gateWriter{gate: make(chan struct{}), blocked: make(chan struct{})}
	lg := zerolog.New(w)
	s := defaults(upstream(t, []string{b.Addr()}))
	s.Access = &lg
	r := start(t, s)
	open := sync.OnceFunc(func() { close(w.gate) })
	t.Cleanup(open) // before the listener's shutdown, which waits for the ends

	w.armed.Store(true)
	if err := echoOnce(r.addr, []byte("first")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection's end line was never written")
	}
	// Connections go round the loops: twice as many as there are reach
	// the loop whose connection's line is stuck.
	for i := range 2 * splice.DefaultLoops() {
		done := make(chan error, 1)
		go func() { done <- echoOnce(r.addr, []byte(fmt.Sprintf("next %d", i))) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("connection %d while a line is stuck: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %d stalled behind a stuck log line", i)
		}
	}
	open()
}
