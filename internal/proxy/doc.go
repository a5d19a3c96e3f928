// Package proxy is l4lb's TCP engine: a Listener accepts connections, picks a
// host of its upstream (pool priority, then the pool's selector), connects
// with a timeout and tries further hosts and pools on failure, then hands
// both sockets to package splice and logs one line when the connection ends.
//
// A Listener's Settings are swapped whole (atomic pointer) so a reload or an
// edit never touches a connection in flight. Run owns every goroutine it
// starts: it returns only after the accept loop, every connection handler
// and every worker have ended, draining for up to DrainTimeout first.
//
// Connections are set up (admitted, connected, handed to splice) by
// workers, goroutines that take one accepted connection after another; the
// accept loop hands a connection to a waiting worker or starts a new one,
// so it never waits for a slow connect or PROXY header. At most
// MaxIdleWorkers stay waiting per listener.
//
// When no host can be reached the client is closed at once with a FIN (as
// nginx stream does) and a warning says why; it is never left waiting.
//
// Not here: health checks (package health marks hosts up and down), the
// control API, UDP.
package proxy
