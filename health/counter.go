package health

// counter is rise/fall hysteresis as a pure value. It counts consecutive
// results that disagree with the current state; one agreeing result resets
// the count. The state flips after fall disagreeing failures (when up) or
// rise disagreeing successes (when down).
//
// This is the nginx/caddy-l4/traefik rule, not HAProxy's: HAProxy keeps one
// health counter from 0 to rise+fall-1 that successes raise and failures
// lower, so isolated results are not forgotten. The consecutive rule is
// easier to explain ("3 failures in a row") and gives exactly what the
// reliability notes ask: alternating ok/fail never changes the state.
type counter struct {
	rise, fall int
	up         bool
	n          int // consecutive results that disagree with up
}

// observe records one probe result and reports whether the state changed,
// and the state after it.
func (c *counter) observe(ok bool) (transition, up bool) {
	if ok == c.up {
		c.n = 0
		return false, c.up
	}
	c.n++
	need := c.fall
	if !c.up {
		need = c.rise
	}
	if c.n < need {
		return false, c.up
	}
	c.up, c.n = ok, 0
	return true, c.up
}

// sync aligns the counter with a state set elsewhere (passive health marked
// the host down, say), starting the count afresh.
func (c *counter) sync(up bool) {
	if c.up != up {
		c.up, c.n = up, 0
	}
}
