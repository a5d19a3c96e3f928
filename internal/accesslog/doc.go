// Package accesslog is the file behind l4lb's access log: one JSON line per
// connection (TCP) or session (UDP), apart from the main log, in a file an
// operator rotates with logrotate.
//
// A File is opened O_APPEND|O_CREATE with mode 0640 and written to by every
// connection handler at once; each line is one write(2), which O_APPEND
// keeps whole. Reopen (called on SIGHUP, after logrotate renamed the file)
// opens the path afresh and swaps it in without a lock: a write that raced
// with the swap and found the old file closed is retried on the new one,
// so no line is lost and no handler waits on another.
//
// The lines themselves are written by the listeners (proxy.Settings.Access,
// udp.Settings.Access) through a zerolog.Logger built with Logger; their
// schema is documented in docs/METRICS.md.
//
// The package does not rotate, compress or size-limit anything: that is
// logrotate's job (with "create" or "copytruncate" both work; with
// "create", send SIGHUP in postrotate).
package accesslog
