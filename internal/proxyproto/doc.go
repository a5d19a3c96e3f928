// Package proxyproto reads and writes PROXY protocol headers, versions 1
// (text) and 2 (binary), as HAProxy's specification "The PROXY protocol"
// (haproxy.org/download/2.9/doc/proxy-protocol.txt) defines them. A proxy
// in front of l4lb uses them to tell l4lb the client's address, and l4lb
// uses them to tell backends.
//
// Read never consumes a byte past the header: bytes that arrived with it in
// the same read are returned as rest, for the caller to forward first. That
// lets the caller keep the raw socket (and splice) for everything after.
//
// What it does not do: TLVs are skipped, not interpreted; only TCP over IPv4
// and IPv6 (and UNKNOWN/LOCAL) are produced.
package proxyproto
