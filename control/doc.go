// Package control is l4lb's control API: an HTTP/1.1 + JSON server on a
// Unix socket, and the client that `l4lb ctl` uses.
//
// The server edits nothing itself. It checks who is calling, decodes and
// checks each request, and hands it to an API, which the binary implements
// over its live pools:
//
//	srv := control.New(control.ServerConfig{Socket: "/run/l4lb/control.sock"}, impl, log)
//	go func() { errc <- srv.Run(ctx) }()
//	<-srv.Ready() // socket bound, mode set: tell systemd
//
// # Resources
//
//	GET    /v1/upstreams                               200 {"upstreams": [Upstream...]}
//	GET    /v1/upstreams/{u}                           200 Upstream
//	PUT    /v1/upstreams/{u}                           201 created / 200 replaced, Upstream
//	DELETE /v1/upstreams/{u}                           204
//	POST   /v1/upstreams/{u}/pools                     201 Upstream        body PoolSpec
//	PATCH  /v1/upstreams/{u}/pools/{p}                 200 Upstream        body PoolPatch
//	DELETE /v1/upstreams/{u}/pools/{p}                 200 Upstream
//	POST   /v1/upstreams/{u}/pools/{p}/hosts           201 Upstream        body HostSpec
//	PATCH  /v1/upstreams/{u}/pools/{p}/hosts/{h}       200 Upstream        body HostPatch
//	DELETE /v1/upstreams/{u}/pools/{p}/hosts/{h}       202 Upstream (the host drains, then goes)
//	POST   /v1/upstreams/{u}/pools/{p}/hosts/{h}/down  200 Upstream
//	POST   /v1/upstreams/{u}/pools/{p}/hosts/{h}/up    200 Upstream
//	POST   /v1/upstreams/{u}/pools/{p}/hosts/{h}/drain 200 Upstream
//	GET    /v1/status                                  200 Status
//	GET    /v1/events[?since=N]                        200 NDJSON stream of events.Event
//	POST   /v1/reload                                  200 {"result": "reloaded"}
//	POST   /v1/reset                                   200 {"result": "reset"} (drops live edits)
//
// Path segments are percent-escaped (a host id "unix:/run/x.sock" is
// "unix:%2Frun%2Fx.sock"); hosts are named by id, which defaults to their
// address. Edits answer with the upstream as it is after the edit. Routes
// that take no body accept an empty one or {}. No route but events takes a
// query string.
//
// # Errors
//
// A refused request changes nothing and gets {"error": "...", "field": "..."}
// ("field" only when one field is at fault):
//
//	400  malformed JSON, invalid UTF-8, wrong type, unknown field, data after
//	     the object, a value out of range (*FieldError), a query where none is taken
//	404  unknown upstream, pool or host (ErrNotFound), or no such resource
//	405  known path, wrong method (with Allow)
//	409  duplicate pool or host (ErrConflict)
//	413  body larger than ServerConfig.MaxBody
//	422  well-formed but not applicable (ErrInvalid), e.g. a config file that
//	     does not load on reload; the message lists the problems
//	503  ErrUnavailable (e.g. the shared edit store cannot be reached)
//	500  any other error of the API
//
// # Security
//
// The socket file is created with ServerConfig.Mode (0600 by default) by
// setting the umask around bind(2), so it is never, even briefly, more open
// than configured; the umask is process-wide, so a package mutex serialises
// that moment. A stale socket left by a crashed run (connect refused) is
// removed; a socket something still accepts on, or a file that is not a
// socket, is left alone and Run fails. Each accepted connection's peer is
// checked with SO_PEERCRED before any byte is read: root, the server's own
// uid, ServerConfig.AllowUIDs and members of ServerConfig.Group are let in;
// anyone else is closed at once and logged. Bodies are capped (413), requests
// must arrive within ReadTimeout (a client that sends one byte and idles is
// dropped then), and every edit is logged with the peer's uid and pid.
//
// # What it does not do
//
// It has no TLS and no TCP listener: access control is the file mode plus
// SO_PEERCRED. It has no levels of privilege: whoever may connect may edit.
// It keeps no state: persistence, validation against the live pools and
// atomic swaps are the API's job.
package control
