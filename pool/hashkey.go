package pool

import "net/netip"

// HashKey returns the key the hash method maps to a host for a client at
// addr: FNV-1a 64 over the address in its 16-byte form (an IPv4 address and
// its IPv4-mapped IPv6 form hash alike; a zone is ignored), followed by the
// port in 2 bytes big-endian when withPort is set (hash_key =
// "source_ip_port"). Every l4lb process computes the same key for the same
// client, which is what lets several instances behind ECMP agree.
func HashKey(addr netip.AddrPort, withPort bool) uint64 {
	h := uint64(fnvOffset64)
	ip := addr.Addr().As16()
	for _, b := range ip {
		h ^= uint64(b)
		h *= fnvPrime64
	}
	if withPort {
		p := addr.Port()
		h ^= uint64(p >> 8)
		h *= fnvPrime64
		h ^= uint64(p & 0xff)
		h *= fnvPrime64
	}
	return h
}

// FNV-1a 64 parameters. HashKey and the hash method's table depend on them:
// changing them would move every client.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)
