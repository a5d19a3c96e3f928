// Package health decides whether l4lb's hosts are up: active checks that probe
// each host on a schedule, and passive health that counts failed connects.
//
// # Active checks
//
// A Config names a probe type and its schedule:
//
//	none         no probe; the host is up unless passive health says otherwise
//	tcp          a connection opens within Timeout
//	http         a request gets a status not matching FailStatus ("5xx", "403", "4xx"),
//	             and a body containing ExpectBody if set; optional TLS, Host, Headers
//	send_expect  write Send, the reply must start with Expect
//	redis        [AUTH Password,] PING → +PONG [, ROLE must be Role, via INFO replication on old servers]
//	mysql        the server greeting must be a protocol 10 handshake, not an error packet
//
// A probe's error text is the reason operators read: "connection refused",
// "timeout after 1s", "status 503", "expected +PONG, got -NOAUTH ...",
// "role is replica, want master", "not a MySQL greeting: error packet 1130: ...".
//
// A Checker runs one loop per Target, each with one timer: probe, bounded by
// Timeout, then wait Interval ± a random part of Jitter (the first probe waits
// a random part of Jitter, so a fleet does not probe in step). Probes run in
// the loop, so there is never more than one per target. Run owns the loops and
// returns after they exit; Set replaces the targets, stopping (and waiting
// for) the loops of removed ones, starting new ones, and leaving unchanged
// ones alone. NewChecker starts nothing.
//
// # Hysteresis
//
// fall consecutive failures take an up host down, rise consecutive successes
// bring a down host up, and one result the other way resets the count, so an
// alternating ok/fail host never changes state (see counter for why this
// rule and not HAProxy's). Hosts start up, as in nginx: at load, and after a
// reload, traffic flows at once, and a dead host is found after fall probes.
// HAProxy's "init-state down" (wait for rise successes before any traffic)
// would make every start and reload drop all traffic for rise×interval.
//
// # Passive health
//
// Passive has nginx's max_fails/fail_timeout semantics: MaxFails failed
// connects within FailTimeout mark the host down for FailTimeout, after which
// it is tried again. When the target also has an active check, the active
// check decides when the host comes back: it sees the host down and needs
// rise successes. One timer in Passive.Run serves every host.
//
// # Who sets what
//
// Health sets the host's health itself (pool.Host.SetHealth); the Sink is only
// told, once per change and never per probe, so the binary can log and publish
// an event. SetHealth is the one place a transition is decided: when the
// checker and passive health race, only the one whose call changed the
// health reports it. An operator's manual_down or draining is a separate
// admin state in pool.Host, which health never touches; a check keeps
// recording health underneath, so a manual up reveals the truth.
//
// # Known limits
//
// The mysql probe reads the greeting and hangs up without logging in. The
// server counts that as an aborted connect and, after max_connect_errors of
// them in a row from one address without a good login, blocks that address
// ("error packet 1129: Host ... is blocked"). Set max_connect_errors high on
// servers checked this way (MariaDB's default is 100; MySQL 8's, 100 too).
//
// TLS checks do not verify the certificate: a check tests liveness, not
// identity, and many backends use self-signed certificates.
//
// What this package does not do: log, publish events, read TOML, or change
// an operator's state. Those are the binary's.
package health
