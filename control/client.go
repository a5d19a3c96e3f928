package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/l4lb/l4lb/internal/events"
)

// Client talks to a control server over its Unix socket. Its methods return
// the server's views; a refusal is a *StatusError carrying the server's
// message, and anything else (no socket, permission denied, a broken answer)
// is an error that is not.
type Client struct {
	socket string
	hc     *http.Client
}

// StatusError is a request the server answered with a status other than 2xx.
type StatusError struct {
	Code    int    // HTTP status
	Message string // the server's "error"
	Field   string // the server's "field", if it named one
}

func (e *StatusError) Error() string { return e.Message }

// NewClient returns a client for the server at socket.
func NewClient(socket string) *Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:          4,
		IdleConnTimeout:       2 * time.Second, // below the server's idle timeout
		ResponseHeaderTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Close closes idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// do sends a request with in (if not nil) as its JSON body and decodes a 2xx
// answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	_, err := c.doCode(ctx, method, path, in, out)
	return err
}

// doCode is do that also returns the 2xx status.
func (c *Client) doCode(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return 0, fmt.Errorf("control: %s %s: decoding the answer: %w", method, path, err)
	}
	return resp.StatusCode, nil
}

// send does the request and turns a non-2xx answer into a *StatusError.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://l4lb"+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("control: %s: %w", c.socket, unwrapURL(err))
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return nil, &StatusError{Code: resp.StatusCode, Message: e.Error, Field: e.Field}
}

func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func esc(s string) string { return url.PathEscape(s) }

func upath(u string) string       { return "/v1/upstreams/" + esc(u) }
func ppath(u, p string) string    { return upath(u) + "/pools/" + esc(p) }
func hpath(u, p, h string) string { return ppath(u, p) + "/hosts/" + esc(h) }

// Upstreams lists every upstream.
func (c *Client) Upstreams(ctx context.Context) ([]Upstream, error) {
	var l upstreamList
	err := c.do(ctx, "GET", "/v1/upstreams", nil, &l)
	return l.Upstreams, err
}

// Upstream returns one upstream.
func (c *Client) Upstream(ctx context.Context, name string) (Upstream, error) {
	var u Upstream
	err := c.do(ctx, "GET", upath(name), nil, &u)
	return u, err
}

// PutUpstream creates or replaces u whole and returns it as now served, and
// whether it was created.
func (c *Client) PutUpstream(ctx context.Context, u Upstream) (Upstream, bool, error) {
	var out Upstream
	code, err := c.doCode(ctx, "PUT", upath(u.Name), u, &out)
	return out, code == http.StatusCreated, err
}

// DeleteUpstream removes an upstream.
func (c *Client) DeleteUpstream(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", upath(name), nil, nil)
}

// AddPool adds a pool to upstream u and returns the upstream after the edit.
func (c *Client) AddPool(ctx context.Context, u string, p PoolSpec) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "POST", upath(u)+"/pools", p, &out)
	return out, err
}

// PatchPool changes a pool's priority or method.
func (c *Client) PatchPool(ctx context.Context, u, p string, patch PoolPatch) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "PATCH", ppath(u, p), patch, &out)
	return out, err
}

// DeletePool removes a pool; its hosts drain.
func (c *Client) DeletePool(ctx context.Context, u, p string) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "DELETE", ppath(u, p), nil, &out)
	return out, err
}

// AddHost adds a host to pool p of upstream u.
func (c *Client) AddHost(ctx context.Context, u, p string, h HostSpec) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "POST", ppath(u, p)+"/hosts", h, &out)
	return out, err
}

// PatchHost changes a host's weight.
func (c *Client) PatchHost(ctx context.Context, u, p, h string, patch HostPatch) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "PATCH", hpath(u, p, h), patch, &out)
	return out, err
}

// RemoveHost drains a host, then removes it.
func (c *Client) RemoveHost(ctx context.Context, u, p, h string) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "DELETE", hpath(u, p, h), nil, &out)
	return out, err
}

// HostAction marks a host down, up, or draining.
func (c *Client) HostAction(ctx context.Context, u, p, h string, a Action) (Upstream, error) {
	var out Upstream
	err := c.do(ctx, "POST", hpath(u, p, h)+"/"+string(a), nil, &out)
	return out, err
}

// Status returns every host's live state and counters.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, "GET", "/v1/status", nil, &st)
	return st, err
}

// Sessions returns the live UDP sessions.
func (c *Client) Sessions(ctx context.Context) ([]Session, error) {
	var body struct {
		Sessions []Session `json:"sessions"`
	}
	err := c.do(ctx, "GET", "/v1/sessions", nil, &body)
	return body.Sessions, err
}

// Reload asks the server to re-read its config file.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, "POST", "/v1/reload", nil, nil)
}

// Reset drops every live edit: back to the config file.
func (c *Client) Reset(ctx context.Context) error {
	return c.do(ctx, "POST", "/v1/reset", nil, nil)
}

// Events calls fn with each event of the feed, first the kept ones with
// Seq > since (none if since is Live), until ctx ends (then it returns nil),
// fn returns an error, or the server ends the stream (a *StatusError when it
// said why, such as a reader that fell behind).
func (c *Client) Events(ctx context.Context, since uint64, fn func(events.Event) error) error {
	path := "/v1/events"
	if since != Live {
		path += "?since=" + strconv.FormatUint(since, 10)
	}
	resp, err := c.send(ctx, "GET", path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			events.Event
			Error string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("control: events: %w", err)
		}
		if line.Error != "" {
			return &StatusError{Code: resp.StatusCode, Message: line.Error}
		}
		if err := fn(line.Event); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("control: events: %w", err)
	}
	return fmt.Errorf("control: events: the server ended the stream")
}
