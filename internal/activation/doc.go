// Package activation takes the listening sockets systemd passes to a
// service started by a socket unit (socket activation, sd_listen_fds(3)):
// fds 3, 4, … with LISTEN_PID (the pid they are for), LISTEN_FDS (how
// many) and LISTEN_FDNAMES (colon-separated names, from the socket unit's
// FileDescriptorName=, by default the socket unit's name) in the
// environment.
//
// FromEnv matches each socket to a configured listener: first by name (a
// socket named as a listener is that listener's, whatever the listener's
// listen says), then by address (a socket bound where a listener's listen
// says, ":port" matching the unspecified address of either family). The
// kind must agree: a tcp listener takes a listening stream socket of
// AF_INET or AF_INET6, a unix one a listening AF_UNIX stream socket, a udp
// one a datagram socket. A socket named as a listener but of another kind
// is an error, so that a unit and a config that disagree stop l4lb at
// start rather than leave a port unserved.
//
// The Sockets satisfy the server's Inheritor, as package upgrade's
// Handover does. Take hands a listener a duplicate of its socket and keeps
// the original until Close, at exit, and after start matches by address
// alone, used sockets included: asked again for a listener a reload adds
// (or removes and adds back), it could give that listener the socket
// systemd holds bound, where binding afresh fails. The server asks only in
// Bind today, so a reload binds its new listeners itself. Sockets no
// listener takes are reported by Unused.
//
// FromEnv unsets the three variables whatever it finds, so that a process
// l4lb starts (an upgrade) does not take the sockets as its own: they reach
// it through the upgrade's handover instead.
//
// What the package does not do: Accept=yes sockets (one connection per
// service instance; l4lb wants listening sockets), FIFOs and special files,
// or the sd_notify FDSTORE.
package activation
