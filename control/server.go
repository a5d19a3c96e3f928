package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"math"
	"net"
	"net/http"
	"os"
	"os/user"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/l4lb/l4lb/internal/logkey"
)

// Defaults for the zero fields of ServerConfig.
const (
	DefaultSocket       = "/run/l4lb/control.sock"
	DefaultMode         = 0o600
	DefaultMaxBody      = 1 << 20
	DefaultReadTimeout  = 5 * time.Second
	DefaultWriteTimeout = 10 * time.Second
	maxHeaderBytes      = 16 << 10
	eventsBuffer        = 256 // events a slow /v1/events reader may fall behind
)

// Live is the since of an events stream that replays nothing.
const Live = math.MaxUint64

// Log field keys of the control server (not in logkey, which this package's
// owner may not edit; they belong there).
const (
	keyUID    = "uid"
	keyPID    = "pid"
	keyOp     = "op"
	keyStatus = "status"
	keyReq    = "request"
	keyError  = "error"
	keySocket = "socket"
)

// ServerConfig configures a Server. Zero fields take the defaults above.
type ServerConfig struct {
	Socket       string        // path of the Unix socket; "" = DefaultSocket
	Mode         os.FileMode   // permission bits of the socket file; 0 = 0600
	Group        string        // group name or number given to the socket file and allowed to connect; "" = none
	AllowUIDs    []int         // uids allowed besides root and our own
	MaxBody      int64         // request body cap in bytes; 0 = 1 MiB (larger gets 413)
	ReadTimeout  time.Duration // to read a whole request, and idle time between requests; 0 = 5s
	WriteTimeout time.Duration // to write a response (each line of an events stream); 0 = 10s
}

// Peer is the process at the other end of a control connection, as the
// kernel saw it at connect(2).
type Peer struct {
	PID, UID, GID int
	Groups        []int // supplementary groups, sorted
}

// Server serves the control API. Build it with New, run it with Run.
type Server struct {
	cfg   ServerConfig
	api   API
	log   zerolog.Logger
	ready chan struct{}
	wg    sync.WaitGroup // handlers in flight

	// countRead, if set (tests), is told how many bytes each connection read.
	countRead func(n int)
}

// New returns a server for api; it starts nothing.
func New(cfg ServerConfig, api API, log zerolog.Logger) *Server {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.Mode == 0 {
		cfg.Mode = DefaultMode
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	return &Server{cfg: cfg, api: api, log: log, ready: make(chan struct{})}
}

// Ready is closed once the socket is bound with its final mode and group,
// so a caller can tell systemd it is ready.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run binds the socket, serves until ctx ends, then stops accepting, ends
// events streams, and returns once every handler has returned. The socket
// file is removed on the way out.
func (s *Server) Run(ctx context.Context) error {
	gid, err := lookupGroup(s.cfg.Group)
	if err != nil {
		return err
	}
	ln, err := listen(s.cfg.Socket, s.cfg.Mode, gid)
	if err != nil {
		return err
	}
	cl := &credListener{UnixListener: ln, s: s, gid: gid, self: os.Getuid()}
	s.log.Info().Str(keySocket, s.cfg.Socket).Str("mode", fmt.Sprintf("%04o", s.cfg.Mode.Perm())).Msg("control: listening")
	close(s.ready)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hs := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: s.cfg.ReadTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.ReadTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, peerKey{}, pc.peer)
			}
			return ctx
		},
		ErrorLog: stdlog.New(httpLogWriter{s.log}, "", 0),
	}
	served := make(chan error, 1)
	go serve(hs, cl, served)

	select {
	case <-ctx.Done():
		err = nil
	case err = <-served:
		served = nil
	}
	cancel() // ends events streams, whose context derives from ctx
	sctx, stop := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	if hs.Shutdown(sctx) != nil {
		hs.Close()
	}
	stop()
	if served != nil {
		<-served
	}
	s.wg.Wait()
	s.log.Info().Str(keySocket, s.cfg.Socket).Msg("control: stopped")
	return err
}

// serve runs the HTTP server on ln and reports how it ended.
func serve(hs *http.Server, ln net.Listener, done chan<- error) {
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	done <- err
}

// lookupGroup resolves a group name or number; "" gives -1.
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("control: socket group: %w", err)
	}
	return strconv.Atoi(g.Gid)
}

// httpLogWriter sends net/http's own complaints (TLS-less handshake junk,
// hijack errors) to the logger at debug.
type httpLogWriter struct{ log zerolog.Logger }

func (w httpLogWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg("control: http: " + string(p))
	return len(p), nil
}

type peerKey struct{}

// credListener checks each accepted connection's peer with SO_PEERCRED
// before net/http reads a byte from it. A refused peer is closed at once.
type credListener struct {
	*net.UnixListener
	s    *Server
	gid  int // socket group, -1 if none
	self int
}

type peerConn struct {
	*net.UnixConn
	peer  Peer
	count func(int)
}

func (c *peerConn) Read(b []byte) (int, error) {
	n, err := c.UnixConn.Read(b)
	if c.count != nil && n > 0 {
		c.count(n)
	}
	return n, err
}

func (l *credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		p, err := peerOf(c)
		if err != nil {
			l.s.log.Warn().Err(err).Msg("control: cannot read peer credentials; connection closed")
			c.Close()
			continue
		}
		if !l.allowed(p) {
			l.s.log.Warn().Int(keyUID, p.UID).Int(keyPID, p.PID).Msg("control: peer not allowed; connection closed")
			c.Close()
			continue
		}
		return &peerConn{UnixConn: c, peer: p, count: l.s.countRead}, nil
	}
}

// allowed: root, our own uid, a listed uid, or a member of the socket group.
func (l *credListener) allowed(p Peer) bool {
	switch {
	case p.UID == 0, p.UID == l.self, slices.Contains(l.s.cfg.AllowUIDs, p.UID):
		return true
	case l.gid >= 0 && (p.GID == l.gid || slices.Contains(p.Groups, l.gid)):
		return true
	}
	return false
}

// request is what a handler gets.
type request struct {
	r    *http.Request
	w    http.ResponseWriter
	body []byte // the raw body once decoded, for the audit log
	max  int64
}

// decode reads the body (capped) and decodes it into v; see decodeBody.
func (q *request) decode(v any, emptyOK bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(q.w, q.r.Body, q.max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &httpError{code: http.StatusRequestEntityTooLarge,
				msg: fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
		}
		return badRequest("reading request body: %v", err)
	}
	if err := decodeBody(body, v, emptyOK); err != nil {
		return err
	}
	q.body = body
	return nil
}

// path returns a path parameter after checking it (see checkRef).
func (q *request) path(name string) (string, error) {
	v := q.r.PathValue(name)
	if err := checkRef(name, v); err != nil {
		return "", err
	}
	return v, nil
}

// handlerFunc answers a request with a status and a JSON body (nil for none).
type handlerFunc func(q *request) (int, any, error)

// handle registers h for pattern. An edit is audited: logged at info with
// the peer when it is applied, at warn when it is refused.
func (s *Server) handle(mux *http.ServeMux, pattern, op string, edit bool, h handlerFunc) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		s.wg.Add(1)
		defer s.wg.Done()
		q := &request{r: r, w: w, max: s.cfg.MaxBody}
		var code int
		var body any
		err := noQuery(r)
		if err == nil {
			code, body, err = h(q)
		}
		if err != nil {
			code, body = errorBody(err)
		}
		writeJSON(w, code, body)
		if !edit {
			return
		}
		p, _ := r.Context().Value(peerKey{}).(Peer)
		var ev *zerolog.Event
		if err == nil {
			ev = s.log.Info()
			if len(q.body) > 0 {
				ev = ev.RawJSON(keyReq, q.body)
			}
		} else {
			ev = s.log.Warn().Str(keyError, err.Error())
		}
		ev.Str(keyOp, op).Int(keyUID, p.UID).Int(keyPID, p.PID).
			Str(logkey.Upstream, r.PathValue("u")).Str(logkey.Pool, r.PathValue("p")).Str(logkey.Host, r.PathValue("h")).
			Int(keyStatus, code).Msg("control: edit")
	})
}

// noQuery refuses query parameters on routes that take none, so a typo
// (?fore=1) is not silently ignored.
func noQuery(r *http.Request) error {
	if r.URL.RawQuery != "" && r.Pattern != "GET /v1/events" {
		return badRequest("unexpected query %q: this resource takes no parameters", r.URL.RawQuery)
	}
	return nil
}

// errorBody maps an error to its status and {"error": ...} body.
func errorBody(err error) (int, any) {
	type body struct {
		Error string `json:"error"`
		Field string `json:"field,omitempty"`
	}
	var he *httpError
	var fe *FieldError
	switch {
	case errors.As(err, &he):
		return he.code, body{he.msg, he.field}
	case errors.As(err, &fe):
		return http.StatusBadRequest, body{err.Error(), fe.Field}
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, body{Error: err.Error()}
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, body{Error: err.Error()}
	case errors.Is(err, ErrInvalid):
		return http.StatusUnprocessableEntity, body{Error: err.Error()}
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable, body{Error: err.Error()}
	}
	return http.StatusInternalServerError, body{Error: err.Error()}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	if v == nil || code == http.StatusNoContent {
		w.WriteHeader(code)
		return
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error": "encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
