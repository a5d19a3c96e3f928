// Package sdnotify speaks systemd's notify protocol (sd_notify(3)): one
// datagram of newline-separated VAR=value assignments sent to the unix
// socket named by $NOTIFY_SOCKET.
//
// A Notifier from FromEnv is nil when l4lb does not run under a Type=notify
// unit; every method of a nil Notifier does nothing, so callers never check.
// The package does not unset the environment: a process handing its
// sockets to a new binary (package upgrade) must pass NOTIFY_SOCKET on.
//
// It is 80 lines against the 2 functions of go-systemd's daemon package we
// would use; owning them lets the watchdog honour an upgrade (see
// WatchdogInterval) and keeps the dependency list short.
package sdnotify
