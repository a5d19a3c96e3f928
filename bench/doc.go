// Package bench measures l4lb against the direct path, HAProxy and nginx on
// one machine, in one run, on the same work. `make bench` runs it through
// cmd/l4lb-bench; docs/PERFORMANCE.md holds the method and the figures.
//
// # What a run does
//
// It starts the backends once: iperf3 -s and redis-server (child processes),
// an in-process TCP echo that holds idle connections (the sink) and an
// in-process UDP echo. Then, for each scenario and each target in turn, it
// starts the target afresh on ports it picks on 127.0.0.1 (configs generated
// into a temporary directory; HAProxy with -db and nginx with daemon off, so
// the suite owns their PIDs, all under prlimit for the fd limit), runs the
// load, reads the proxy's /proc entries, and stops it by PID:
//
//   - bulk: iperf3, 1 and 8 streams, both directions; the proxy's CPU seconds
//     (utime+stime of the process and its children) per GB received;
//   - redis: redis-benchmark GET, SET and PING with 50 clients at pipeline 1
//     and 16 (requests/s, p50, p99, proxy CPU per request); new connections per
//     second with -k 0 and CPU per connection; syscalls per request of a GET
//     pipeline 1 run from perf's raw_syscalls:sys_enter counter, when perf
//     works;
//   - udp: round trips per second and p50/p99 of 8 clients with one datagram
//     in flight each, and the proxy's CPU per round trip;
//   - idle: RSS at rest, then RSS and fds per connection while 5 000 (full
//     mode: 10 000) connections that have echoed one byte sit idle.
//
// Targets that cannot run a scenario leave the cell empty: HAProxy has no UDP
// (and an l4lb binary whose `l4lb check` rejects protocol = "udp" is noted and
// skipped there). Options.Only (l4lb-bench -only udp) runs some scenarios alone.
//
// # What it will not do
//
// It does not tune the machine (CPU governor, IRQ affinity, pinning): the
// client, the proxy and the backend share the same cores, so figures are
// ratios within one run, not absolute capacities. It starts nothing outside
// loopback, stops only the processes it started, and never installs anything
// in smoke mode. On a 2-core machine the load generators use most of the
// CPU; the proxy's CPU per unit of work is the steadier figure.
//
// The suite is Linux-only (it reads /proc, uses prlimit and Pdeathsig); on
// other systems the package is empty.
package bench
