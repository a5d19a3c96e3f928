package pool

import (
	"hash/fnv"
	"net/netip"
	"testing"
)

// TestHashKey pins HashKey to FNV-1a 64 over the 16-byte address and the
// big-endian port: another l4lb version, or another process, must compute
// the same key for the same client.
func TestHashKey(t *testing.T) {
	ref := func(b ...byte) uint64 {
		h := fnv.New64a()
		h.Write(b)
		return h.Sum64()
	}
	v4 := netip.MustParseAddrPort("192.0.2.7:40000")
	a16 := v4.Addr().As16()
	if got, want := HashKey(v4, false), ref(a16[:]...); got != want {
		t.Errorf("source_ip: %#x, want %#x", got, want)
	}
	if got, want := HashKey(v4, true), ref(append(a16[:], 40000>>8, 40000&0xff)...); got != want {
		t.Errorf("source_ip_port: %#x, want %#x", got, want)
	}
	// A golden value, so a change of the function cannot go unnoticed.
	if got := HashKey(v4, false); got != 0xd9c7108395f6d85c {
		t.Errorf("HashKey(192.0.2.7) = %#x, want 0xd9c7108395f6d85c", got)
	}
	mapped := netip.MustParseAddrPort("[::ffff:192.0.2.7]:1")
	if HashKey(mapped, false) != HashKey(v4, false) {
		t.Error("IPv4 and IPv4-mapped IPv6 hash differently")
	}
	if HashKey(v4, true) == HashKey(netip.AddrPortFrom(v4.Addr(), 40001), true) {
		t.Error("the port does not change the source_ip_port key")
	}
	if HashKey(v4, false) != HashKey(netip.AddrPortFrom(v4.Addr(), 40001), false) {
		t.Error("the port changes the source_ip key")
	}
	z := netip.MustParseAddrPort("[fe80::1%eth0]:1")
	if HashKey(z, false) != HashKey(netip.MustParseAddrPort("[fe80::1]:1"), false) {
		t.Error("the zone changes the key")
	}
}
