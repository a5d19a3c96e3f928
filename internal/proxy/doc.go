// Package proxy is l4lb's TCP engine: a Listener accepts connections, picks a
// host of its upstream (pool priority, then the pool's selector), connects
// with a timeout and tries further hosts and pools on failure, then hands
// both sockets to package splice and logs one line when the connection ends.
//
// A Listener's Settings are swapped whole (atomic pointer) so a reload or an
// edit never touches a connection in flight. Run owns every goroutine it
// starts: it returns only after the accept loop and every connection handler
// have ended, draining for up to DrainTimeout first.
//
// When no host can be reached the client is closed at once with a FIN (as
// nginx stream does) and a warning says why; it is never left waiting.
//
// Not here: health checks (package health marks hosts up and down), the
// control API, UDP.
package proxy
