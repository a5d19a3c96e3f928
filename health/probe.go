package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Prober runs one probe. A nil error means healthy; an error's text is the
// reason operators read in the logs and the control API ("connection
// refused", "timeout after 1s", "status 503", "expected +PONG, got -ERR ...").
// Probe must return by ctx's deadline and leave no goroutine or fd behind.
type Prober interface {
	Probe(ctx context.Context, addr Addr) error
}

// NewProber returns the prober for c (after defaults). It validates c first.
func NewProber(c Config) (Prober, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	base := dialer{timeout: c.Timeout}
	switch c.Type {
	case TypeNone:
		return noneProber{}, nil
	case TypeTCP:
		return tcpProber{base}, nil
	case TypeHTTP:
		return newHTTPProber(c, base), nil
	case TypeSendExpect:
		return sendExpectProber{base, []byte(c.Send), []byte(c.Expect)}, nil
	case TypeRedis:
		return redisProber{base, c.Password, c.Role}, nil
	case TypeMySQL:
		return mysqlProber{base}, nil
	case TypeUDP:
		return udpProber{c.Timeout, []byte(c.Send), []byte(c.Expect)}, nil
	}
	return nil, fmt.Errorf("%w: type: %q", ErrConfig, c.Type) // unreachable after Validate
}

var (
	_ Prober = noneProber{}
	_ Prober = tcpProber{}
	_ Prober = (*httpProber)(nil)
	_ Prober = sendExpectProber{}
	_ Prober = redisProber{}
	_ Prober = mysqlProber{}
)

// noneProber always passes: the host is up unless passive health says otherwise.
type noneProber struct{}

func (noneProber) Probe(context.Context, Addr) error { return nil }

// dialer connects and turns errors into reasons. timeout is only for the
// reason text; the bound itself comes from ctx.
type dialer struct{ timeout time.Duration }

// dial connects to a and sets the conn's deadline from ctx, so that reads and
// writes are bounded too. Cancelling ctx (the host was removed, its check
// changed, or l4lb is stopping) unblocks them at once: without that, a
// Checker.Set that removes a host mid-probe would wait out the probe's
// whole timeout.
func (d dialer) dial(ctx context.Context, a Addr) (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, a.Network, a.Address)
	if err != nil {
		return nil, d.reason(ctx, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return probeConn{conn, stop}, nil
}

// probeConn is a probe's connection: closing it also unhooks it from the
// probe's context.
type probeConn struct {
	net.Conn
	stop func() bool
}

func (c probeConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

// reason maps err to the short text an operator reads. Errors that are not
// recognised keep their text.
func (d dialer) reason(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout(), ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("timeout after %v", d.timeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused")
	case errors.Is(err, syscall.ECONNRESET):
		return errors.New("connection reset by peer")
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return errors.New("no route to host")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("connection closed by peer")
	}
	return err
}

// tcpProber passes when a connection opens.
type tcpProber struct{ dialer }

func (p tcpProber) Probe(ctx context.Context, a Addr) error {
	conn, err := p.dial(ctx, a)
	if err != nil {
		return err
	}
	return conn.Close()
}

// show renders protocol bytes for a reason: trailing CRLF trimmed, the rest
// escaped as in a Go string.
func show(b []byte) string {
	b = bytes.TrimRight(b, "\r\n")
	if len(b) > 64 {
		b = append(b[:64:64], "..."...)
	}
	q := strconv.Quote(string(b))
	return q[1 : len(q)-1]
}

// sendExpectProber writes send and wants a reply that starts with expect.
type sendExpectProber struct {
	dialer
	send, expect []byte
}

func (p sendExpectProber) Probe(ctx context.Context, a Addr) error {
	conn, err := p.dial(ctx, a)
	if err != nil {
		return err
	}
	defer conn.Close()
	if len(p.send) > 0 {
		if _, err := conn.Write(p.send); err != nil {
			return p.reason(ctx, err)
		}
	}
	got := make([]byte, len(p.expect))
	n, err := io.ReadFull(conn, got)
	got = got[:n]
	if !bytes.Equal(got, p.expect) {
		if n == 0 && err != nil {
			return p.reason(ctx, err)
		}
		if bytes.HasPrefix(p.expect, got) && err != nil {
			return fmt.Errorf("expected %s, got %s then %v", show(p.expect), show(got), p.reason(ctx, err))
		}
		return fmt.Errorf("expected %s, got %s", show(p.expect), show(got))
	}
	return nil
}

// httpProber sends one request per probe, on a new connection that is closed
// afterwards (no keep-alive, so nothing outlives the probe).
type httpProber struct {
	dialer
	c      Config
	client *http.Client
}

type addrKey struct{}

func newHTTPProber(c Config, d dialer) *httpProber {
	tr := &http.Transport{
		// The URL's host is only for the Host header; the probe always
		// goes to the Addr carried in the request's context.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			a := ctx.Value(addrKey{}).(Addr)
			var nd net.Dialer
			return nd.DialContext(ctx, a.Network, a.Address)
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true}, // liveness, not identity: see Config.TLS
	}
	return &httpProber{dialer: d, c: c, client: &http.Client{
		Transport: tr,
		// A redirect is an answer; following it would probe someone else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (p *httpProber) Probe(ctx context.Context, a Addr) error {
	scheme := "http"
	if p.c.TLS {
		scheme = "https"
	}
	host := p.c.Host
	if host == "" {
		host = a.Address
		if a.Network == "unix" {
			host = "localhost"
		}
	}
	ctx = context.WithValue(ctx, addrKey{}, a)
	req, err := http.NewRequestWithContext(ctx, p.c.Method, scheme+"://"+host+p.c.Path, nil)
	if err != nil {
		return err
	}
	for k, v := range p.c.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("User-Agent", "l4lb-health")
	resp, err := p.client.Do(req)
	if err != nil {
		return p.reason(ctx, err)
	}
	defer resp.Body.Close()
	for _, m := range p.c.FailStatus {
		if matchMask(m, resp.StatusCode) {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
	}
	if p.c.ExpectBody != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil {
			return p.reason(ctx, err)
		}
		if !bytes.Contains(body, []byte(p.c.ExpectBody)) {
			return fmt.Errorf("status %d, body does not contain %q", resp.StatusCode, p.c.ExpectBody)
		}
	}
	return nil
}

// redisProber sends AUTH (with a password), PING, and ROLE (with a role),
// one command at a time.
type redisProber struct {
	dialer
	password, role string
}

func (p redisProber) Probe(ctx context.Context, a Addr) error {
	conn, err := p.dial(ctx, a)
	if err != nil {
		return err
	}
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 4096)
	cmd := func(args ...string) (string, error) {
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, s := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(s), s)
		}
		if _, err := io.WriteString(conn, b.String()); err != nil {
			return "", p.reason(ctx, err)
		}
		line, err := readLine(r)
		if err != nil {
			return "", p.reason(ctx, err)
		}
		return line, nil
	}
	if p.password != "" {
		line, err := cmd("AUTH", p.password)
		if err != nil {
			return err
		}
		if line != "+OK" {
			return fmt.Errorf("AUTH failed: %s", show([]byte(line)))
		}
	}
	line, err := cmd("PING")
	if err != nil {
		return err
	}
	if line != "+PONG" {
		return fmt.Errorf("expected +PONG, got %s", show([]byte(line)))
	}
	if p.role == "" {
		return nil
	}
	role, err := p.getRole(ctx, r, cmd)
	if err != nil {
		return err
	}
	if role == "slave" {
		role = "replica"
	}
	if role != p.role {
		return fmt.Errorf("role is %s, want %s", role, p.role)
	}
	return nil
}

// getRole asks ROLE (Redis 2.8.12 and later) and falls back to INFO
// replication when ROLE is refused (older servers, renamed commands).
func (p redisProber) getRole(ctx context.Context, r *bufio.Reader, cmd func(...string) (string, error)) (string, error) {
	line, err := cmd("ROLE")
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(line, "*") {
		// An array whose first element is the role as a bulk string.
		head, err := readLine(r)
		if err != nil {
			return "", p.reason(ctx, err)
		}
		if !strings.HasPrefix(head, "$") {
			return "", fmt.Errorf("ROLE: unexpected reply %s", show([]byte(head)))
		}
		role, err := readLine(r)
		return role, p.reason(ctx, err)
	}
	line, err = cmd("INFO", "replication")
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(line, "$"))
	if !strings.HasPrefix(line, "$") || err != nil || n < 0 || n > 64<<10 {
		return "", fmt.Errorf("INFO replication: unexpected reply %s", show([]byte(line)))
	}
	body := make([]byte, n+2)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", p.reason(ctx, err)
	}
	for l := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "role:"); ok {
			return v, nil
		}
	}
	return "", errors.New("INFO replication: no role line")
}

// readLine reads one CRLF-terminated RESP line, without the CRLF.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errors.New("reply line too long")
		}
		return "", err
	}
	return string(bytes.TrimRight(line, "\r\n")), nil
}

// mysqlProber reads the server's greeting and closes. It sends nothing: see
// the package documentation about max_connect_errors.
type mysqlProber struct{ dialer }

func (p mysqlProber) Probe(ctx context.Context, a Addr) error {
	conn, err := p.dial(ctx, a)
	if err != nil {
		return err
	}
	defer conn.Close()
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return p.reason(ctx, err)
	}
	n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
	if n > maxGreeting {
		return fmt.Errorf("not a MySQL greeting: packet of %d bytes", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(conn, payload); err != nil {
		return p.reason(ctx, err)
	}
	if _, err := parseGreeting(payload); err != nil {
		return fmt.Errorf("not a MySQL greeting: %w", err)
	}
	return nil
}
