// Package upgrade replaces a running l4lb with a new binary without
// refusing a connection: the old process starts the new one with its
// listening sockets, and stops accepting only once the new one serves.
//
// # The protocol
//
// The old process (the parent) calls Start with duplicates of its
// listening sockets. The new process (the child) is the same command line
// run from os.Executable(), so a binary replaced on disk is the one
// started. It gets:
//
//   - fd 3: its end of a unix stream socketpair to the parent, named by
//     $L4LB_UPGRADE_FD;
//   - fd 4 and on: the listening sockets, named in order by
//     $L4LB_UPGRADE_SOCKETS, a JSON list of {"network","address"} as the
//     config spells them ("tcp" "127.0.0.1:6380", "unix" "/run/x.sock",
//     "udp" ":53").
//
// Then, one line each way over the socketpair:
//
//	child  -> parent  ready   config loaded, every listener bound (inherited or new)
//	parent -> child   go      the parent has closed its control socket
//	child  -> parent  done    the child serves: control socket bound, accepting
//
// On "done" the parent stops accepting (its copies of the sockets close; the
// kernel's accept queues live on in the child's) and drains its connections
// up to drain_timeout, then exits. Both processes accept from the same queue
// until then, so no connection meets a closed port.
//
// # Failure
//
// A child that exits, or closes the socketpair, or says nothing within the
// parent's deadline, before "done" is killed and the parent goes on serving:
// a bad config or a binary that crashes at start changes nothing. If the
// child fails after "go" (it could not bind the control socket), the parent
// binds its control socket again.
//
// # The control socket
//
// The control package binds its socket itself and removes the file when it
// stops, so it is not handed over: the child binds it after the parent let
// it go. A `l4lb ctl` call in that window (between "go" and the child's
// bind, well under a millisecond of work plus scheduling) finds no socket
// and fails; it can be retried.
//
// # systemd
//
// With Type=notify the parent sends RELOADING=1 when the upgrade starts, the
// child sends MAINPID=<its pid> and READY=1 before "done" (the unit needs
// NotifyAccess=all for a message from a process that is not yet the main
// one), and on failure the parent sends MAINPID=<its pid> and READY=1. The
// parent sends nothing after "done": a STOPPING=1 from it would stop the
// service. Start drops WATCHDOG_PID (which names the parent) and
// LISTEN_PID/LISTEN_FDS from the child's environment and keeps
// NOTIFY_SOCKET and WATCHDOG_USEC.
package upgrade
