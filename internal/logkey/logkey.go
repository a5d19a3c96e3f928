// Package logkey names the fields of l4lb's log lines in one place, so that
// every line that speaks of a listener, a host or a byte count uses the same
// key and operators can rely on it in their log queries.
package logkey

// Field keys.
const (
	Listener  = "listener"
	Upstream  = "upstream"
	Pool      = "pool"
	Host      = "host"
	Client    = "client"
	Address   = "address"
	BytesUp   = "bytes_up"   // client to backend
	BytesDown = "bytes_down" // backend to client
	Duration  = "duration"
	End       = "end"
	Reason    = "reason"
	Try       = "try"
	Tries     = "tries"
	Spliced   = "spliced"
	Count     = "count"
	Config    = "config"
	Version   = "version"
	Active    = "active"
	Via       = "via"  // the front balancer that sent a PROXY header
	Kind      = "kind" // what kind of refusal, error, event
)
