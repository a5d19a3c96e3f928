package control

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// routes builds the mux: SPEC §5, plus POST /v1/reset.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	s.handle(mux, "GET /v1/upstreams", "list_upstreams", false, s.listUpstreams)
	s.handle(mux, "GET /v1/upstreams/{u}", "get_upstream", false, s.getUpstream)
	s.handle(mux, "PUT /v1/upstreams/{u}", "put_upstream", true, s.putUpstream)
	s.handle(mux, "DELETE /v1/upstreams/{u}", "delete_upstream", true, s.deleteUpstream)
	s.handle(mux, "POST /v1/upstreams/{u}/pools", "add_pool", true, s.addPool)
	s.handle(mux, "PATCH /v1/upstreams/{u}/pools/{p}", "patch_pool", true, s.patchPool)
	s.handle(mux, "DELETE /v1/upstreams/{u}/pools/{p}", "delete_pool", true, s.deletePool)
	s.handle(mux, "POST /v1/upstreams/{u}/pools/{p}/hosts", "add_host", true, s.addHost)
	s.handle(mux, "PATCH /v1/upstreams/{u}/pools/{p}/hosts/{h}", "patch_host", true, s.patchHost)
	s.handle(mux, "DELETE /v1/upstreams/{u}/pools/{p}/hosts/{h}", "remove_host", true, s.removeHost)
	for _, a := range []Action{ActionDown, ActionUp, ActionDrain} {
		s.handle(mux, "POST /v1/upstreams/{u}/pools/{p}/hosts/{h}/"+string(a), "host_"+string(a), true, s.hostAction(a))
	}
	s.handle(mux, "GET /v1/status", "status", false, s.status)
	s.handle(mux, "GET /v1/sessions", "sessions", false, s.sessions)
	mux.HandleFunc("GET /v1/events", s.events)
	s.handle(mux, "POST /v1/reload", "reload", true, s.reload)
	s.handle(mux, "POST /v1/reset", "reset", true, s.reset)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { notFound(mux, w, r) })
	return mux
}

// notFound answers what no route took: 405 with Allow when the path exists
// with other methods, else 404; both in JSON, unlike the mux's plain text.
func notFound(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{"GET", "PUT", "POST", "PATCH", "DELETE"} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pat := mux.Handler(r2); pat != "" && pat != "/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{
			"error": fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))})
		return
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no such resource: %s %s", r.Method, r.URL.Path)})
}

// upstreamList is the body of GET /v1/upstreams.
type upstreamList struct {
	Upstreams []Upstream `json:"upstreams"`
}

// result is the body of reload and reset.
type result struct {
	Result string `json:"result"`
}

func (s *Server) listUpstreams(q *request) (int, any, error) {
	us := s.api.Upstreams()
	if us == nil {
		us = []Upstream{}
	}
	return http.StatusOK, upstreamList{us}, nil
}

func (s *Server) getUpstream(q *request) (int, any, error) {
	u, err := q.path("u")
	if err != nil {
		return 0, nil, err
	}
	v, err := s.api.Upstream(u)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, v, nil
}

// after answers an edit of upstream u with its view after the edit.
func (s *Server) after(code int, u string) (int, any, error) {
	v, err := s.api.Upstream(u)
	if err != nil {
		return code, nil, nil // deleted meanwhile: the edit itself succeeded
	}
	return code, v, nil
}

func (s *Server) putUpstream(q *request) (int, any, error) {
	name, err := q.path("u")
	if err != nil {
		return 0, nil, err
	}
	var u Upstream
	if err := q.decode(&u, false); err != nil {
		return 0, nil, err
	}
	if u.Name == "" {
		u.Name = name
	} else if u.Name != name {
		return 0, nil, fieldErr("name", "%q does not match the path (%q)", u.Name, name)
	}
	for i := range u.Pools {
		for j := range u.Pools[i].Hosts {
			h := &u.Pools[i].Hosts[j]
			// State is read-only: ignored on PUT. Source is read-only
			// too, but passed on: the server marks every host it takes
			// as an API host, and needs "consul" to leave out a Consul
			// pool's discovered hosts when a GET's body is put back.
			h.State = 0
		}
	}
	if err := u.Validate(); err != nil {
		return 0, nil, err
	}
	created, err := s.api.PutUpstream(u)
	if err != nil {
		return 0, nil, err
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	return s.after(code, name)
}

func (s *Server) deleteUpstream(q *request) (int, any, error) {
	u, err := q.path("u")
	if err != nil {
		return 0, nil, err
	}
	if err := q.decode(&struct{}{}, true); err != nil {
		return 0, nil, err
	}
	if err := s.api.DeleteUpstream(u); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

// paths returns the named path parameters, checked.
func (q *request) paths(names ...string) ([]string, error) {
	out := make([]string, len(names))
	for i, n := range names {
		v, err := q.path(n)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (s *Server) addPool(q *request) (int, any, error) {
	ps, err := q.paths("u")
	if err != nil {
		return 0, nil, err
	}
	var p PoolSpec
	if err := q.decode(&p, false); err != nil {
		return 0, nil, err
	}
	if err := p.Validate(); err != nil {
		return 0, nil, err
	}
	if err := s.api.AddPool(ps[0], p); err != nil {
		return 0, nil, err
	}
	return s.after(http.StatusCreated, ps[0])
}

func (s *Server) patchPool(q *request) (int, any, error) {
	ps, err := q.paths("u", "p")
	if err != nil {
		return 0, nil, err
	}
	var p PoolPatch
	if err := q.decode(&p, false); err != nil {
		return 0, nil, err
	}
	if err := p.Validate(); err != nil {
		return 0, nil, err
	}
	if err := s.api.PatchPool(ps[0], ps[1], p); err != nil {
		return 0, nil, err
	}
	return s.after(http.StatusOK, ps[0])
}

func (s *Server) deletePool(q *request) (int, any, error) {
	ps, err := q.paths("u", "p")
	if err != nil {
		return 0, nil, err
	}
	if err := q.decode(&struct{}{}, true); err != nil {
		return 0, nil, err
	}
	if err := s.api.DeletePool(ps[0], ps[1]); err != nil {
		return 0, nil, err
	}
	return s.after(http.StatusOK, ps[0])
}

func (s *Server) addHost(q *request) (int, any, error) {
	ps, err := q.paths("u", "p")
	if err != nil {
		return 0, nil, err
	}
	h := HostSpec{Weight: DefaultWeight}
	if err := q.decode(&h, false); err != nil {
		return 0, nil, err
	}
	if err := h.Validate(); err != nil {
		return 0, nil, err
	}
	if err := s.api.AddHost(ps[0], ps[1], h); err != nil {
		return 0, nil, err
	}
	return s.after(http.StatusCreated, ps[0])
}

func (s *Server) patchHost(q *request) (int, any, error) {
	ps, err := q.paths("u", "p", "h")
	if err != nil {
		return 0, nil, err
	}
	var p HostPatch
	if err := q.decode(&p, false); err != nil {
		return 0, nil, err
	}
	if err := p.Validate(); err != nil {
		return 0, nil, err
	}
	if err := s.api.PatchHost(ps[0], ps[1], ps[2], p); err != nil {
		return 0, nil, err
	}
	return s.after(http.StatusOK, ps[0])
}

func (s *Server) removeHost(q *request) (int, any, error) {
	ps, err := q.paths("u", "p", "h")
	if err != nil {
		return 0, nil, err
	}
	if err := q.decode(&struct{}{}, true); err != nil {
		return 0, nil, err
	}
	if err := s.api.RemoveHost(ps[0], ps[1], ps[2]); err != nil {
		return 0, nil, err
	}
	// 202: the host drains before it is gone.
	return s.after(http.StatusAccepted, ps[0])
}

func (s *Server) hostAction(a Action) handlerFunc {
	return func(q *request) (int, any, error) {
		ps, err := q.paths("u", "p", "h")
		if err != nil {
			return 0, nil, err
		}
		if err := q.decode(&struct{}{}, true); err != nil {
			return 0, nil, err
		}
		if err := s.api.HostAction(ps[0], ps[1], ps[2], a); err != nil {
			return 0, nil, err
		}
		return s.after(http.StatusOK, ps[0])
	}
}

func (s *Server) sessions(q *request) (int, any, error) {
	ss := s.api.Sessions()
	if ss == nil {
		ss = []Session{}
	}
	return http.StatusOK, map[string][]Session{"sessions": ss}, nil
}

func (s *Server) status(q *request) (int, any, error) {
	st := s.api.Status()
	now := time.Now()
	for i := range st.Hosts {
		h := &st.Hosts[i]
		if !h.DrainDeadline.IsZero() {
			h.DrainRemaining = Duration(max(h.DrainDeadline.Sub(now), 0).Round(time.Millisecond))
		}
	}
	if st.Hosts == nil {
		st.Hosts = []HostStatus{}
	}
	if st.Listeners == nil {
		st.Listeners = []ListenerStatus{}
	}
	return http.StatusOK, st, nil
}

func (s *Server) reload(q *request) (int, any, error) {
	if err := q.decode(&struct{}{}, true); err != nil {
		return 0, nil, err
	}
	if err := s.api.Reload(); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, result{"reloaded"}, nil
}

func (s *Server) reset(q *request) (int, any, error) {
	if err := q.decode(&struct{}{}, true); err != nil {
		return 0, nil, err
	}
	if err := s.api.Reset(); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, result{"reset"}, nil
}

// events streams the event feed as NDJSON: the kept events after ?since=N
// (none without since), then each new one as it happens, flushed line by
// line. It ends when the client goes, when the server stops, or when the
// client falls more than eventsBuffer events behind; then a last line
// {"error": ...} says so and from which seq to resume.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	s.wg.Add(1)
	defer s.wg.Done()
	since := uint64(Live)
	for k, v := range r.URL.Query() {
		if k != "since" || len(v) != 1 {
			code, body := errorBody(badRequest("unexpected query parameter %q: only since=N is accepted", k))
			writeJSON(w, code, body)
			return
		}
		n, err := strconv.ParseUint(v[0], 10, 64)
		if err != nil {
			code, body := errorBody(&httpError{code: http.StatusBadRequest, field: "since", msg: fmt.Sprintf("since: %q is not a sequence number", v[0])})
			writeJSON(w, code, body)
			return
		}
		since = n
	}
	replay, sub := s.api.Subscribe(since, eventsBuffer)
	defer sub.Close()

	rc := http.NewResponseController(w)
	// A stream outlives ReadTimeout: lift the read deadline, or net/http's
	// background read would time out and cancel the request's context.
	rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	var last uint64 // the last seq sent, to tell a dropped reader where to resume
	if since != Live {
		last = since
	}
	send := func(v any) bool {
		rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		return enc.Encode(v) == nil && rc.Flush() == nil
	}
	for _, e := range replay {
		if !send(e) {
			return
		}
		last = e.Seq
	}
	rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if rc.Flush() != nil { // sends the header even with nothing to replay
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-sub.C():
			if !ok {
				if sub.Dropped() {
					send(map[string]string{"error": fmt.Sprintf("events: reader fell behind; resume with since=%d", last)})
				}
				return
			}
			if !send(e) {
				return
			}
			last = e.Seq
		}
	}
}
