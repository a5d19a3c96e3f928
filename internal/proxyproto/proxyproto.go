package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// Header is what a PROXY header says. Local is true for v2 LOCAL and v1
// UNKNOWN headers: the sender speaks for itself, so the connection's own
// addresses apply and Src/Dst are invalid.
type Header struct {
	Version  int // 1 or 2
	Local    bool
	Src, Dst netip.AddrPort
}

// ErrNotProxy means the bytes do not start with a PROXY signature.
var ErrNotProxy = errors.New("proxyproto: no PROXY protocol header")

var sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	maxV1 = 107 // the longest valid v1 line, CRLF included
	// maxV2 caps what we accept of a v2 header: 16 bytes and addresses, plus
	// TLVs. The spec allows 64 KiB of TLVs; a front balancer sends far less.
	maxV2 = 16 + 4096
)

// Read reads one PROXY header (v1 or v2) from r. rest holds bytes read past
// the header, which belong to the stream. Errors name what is wrong.
func Read(r io.Reader) (h Header, rest []byte, err error) {
	buf := make([]byte, 0, 256)
	tmp := make([]byte, 256)
	need := 16 // enough to tell v1 from v2 and read v2's length
	for {
		for len(buf) < need {
			n, err := r.Read(tmp)
			buf = append(buf, tmp[:n]...)
			if err != nil {
				if len(buf) >= need {
					break
				}
				if err == io.EOF {
					if len(buf) == 0 {
						return h, nil, fmt.Errorf("proxyproto: connection closed before a PROXY header")
					}
					return h, nil, fmt.Errorf("proxyproto: connection closed inside a PROXY header after %d bytes", len(buf))
				}
				return h, nil, fmt.Errorf("proxyproto: reading header: %w", err)
			}
			// A v1 line may be shorter than 16 bytes ("PROXY UNKNOWN\r\n").
			if len(buf) >= 6 && bytes.HasPrefix(buf, []byte("PROXY ")) && bytes.IndexByte(buf, '\n') >= 0 {
				break
			}
		}
		h, n, more, err := Parse(buf)
		if err != nil {
			return h, nil, err
		}
		if more > 0 {
			need = len(buf) + more
			continue
		}
		return h, buf[n:], nil
	}
}

// Parse parses a header at the start of b. It returns the header and its
// length, or more > 0 when b holds a valid prefix that needs at least more
// bytes. It never reads past the header.
func Parse(b []byte) (h Header, n, more int, err error) {
	switch {
	case len(b) >= len(sigV2) && bytes.Equal(b[:len(sigV2)], sigV2):
		return parseV2(b)
	case len(b) < len(sigV2) && bytes.HasPrefix(sigV2, b):
		return h, 0, len(sigV2) - len(b), nil
	case bytes.HasPrefix(b, []byte("PROXY ")):
		return parseV1(b)
	case len(b) < 6 && bytes.HasPrefix([]byte("PROXY "), b):
		return h, 0, 6 - len(b), nil
	}
	return h, 0, 0, ErrNotProxy
}

func parseV1(b []byte) (h Header, n, more int, err error) {
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		if len(b) >= maxV1 {
			return h, 0, 0, fmt.Errorf("proxyproto: v1 header longer than %d bytes", maxV1)
		}
		return h, 0, 1, nil
	}
	if end+2 > maxV1 {
		return h, 0, 0, fmt.Errorf("proxyproto: v1 header longer than %d bytes", maxV1)
	}
	line := string(b[:end])
	n = end + 2
	h.Version = 1
	f := splitSpaces(line)
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		h.Local = true
		return h, n, 0, nil
	}
	if len(f) != 6 {
		return h, 0, 0, fmt.Errorf("proxyproto: v1 header %q: want PROXY TCP4|TCP6 SRC DST SPORT DPORT", line)
	}
	src, err1 := netip.ParseAddr(f[2])
	dst, err2 := netip.ParseAddr(f[3])
	sp, err3 := parsePort(f[4])
	dp, err4 := parsePort(f[5])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return h, 0, 0, fmt.Errorf("proxyproto: v1 header %q: %v", line, err)
	}
	switch f[1] {
	case "TCP4":
		if !src.Is4() || !dst.Is4() {
			return h, 0, 0, fmt.Errorf("proxyproto: v1 header %q: TCP4 with a non-IPv4 address", line)
		}
	case "TCP6":
		if !src.Is6() || !dst.Is6() || src.Is4In6() {
			return h, 0, 0, fmt.Errorf("proxyproto: v1 header %q: TCP6 with a non-IPv6 address", line)
		}
	default:
		return h, 0, 0, fmt.Errorf("proxyproto: v1 header %q: unknown protocol %q", line, f[1])
	}
	h.Src, h.Dst = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	return h, n, 0, nil
}

// splitSpaces splits on single spaces, as v1 requires (no runs, no tabs).
func splitSpaces(s string) []string {
	var f []string
	for {
		i := bytes.IndexByte([]byte(s), ' ')
		if i < 0 {
			return append(f, s)
		}
		f = append(f, s[:i])
		s = s[i+1:]
	}
}

func parsePort(s string) (uint16, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("bad port %q", s)
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint16(p), nil
}

func parseV2(b []byte) (h Header, n, more int, err error) {
	if len(b) < 16 {
		return h, 0, 16 - len(b), nil
	}
	verCmd, fam := b[12], b[13]
	length := int(binary.BigEndian.Uint16(b[14:16]))
	if verCmd>>4 != 2 {
		return h, 0, 0, fmt.Errorf("proxyproto: v2 header with version %d", verCmd>>4)
	}
	if 16+length > maxV2 {
		return h, 0, 0, fmt.Errorf("proxyproto: v2 header of %d bytes, more than the %d accepted", 16+length, maxV2)
	}
	if len(b) < 16+length {
		return h, 0, 16 + length - len(b), nil
	}
	n = 16 + length
	h.Version = 2
	body := b[16:n]
	switch verCmd & 0xf {
	case 0: // LOCAL: health checks and the like from the proxy itself
		h.Local = true
		return h, n, 0, nil
	case 1: // PROXY
	default:
		return h, 0, 0, fmt.Errorf("proxyproto: v2 header with unknown command %d", verCmd&0xf)
	}
	switch fam {
	case 0x11, 0x12: // TCP4, UDP4
		if len(body) < 12 {
			return h, 0, 0, fmt.Errorf("proxyproto: v2 IPv4 header with %d address bytes, want 12", len(body))
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
	case 0x21, 0x22: // TCP6, UDP6
		if len(body) < 36 {
			return h, 0, 0, fmt.Errorf("proxyproto: v2 IPv6 header with %d address bytes, want 36", len(body))
		}
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
	case 0x00, 0x31, 0x32: // UNSPEC, unix: no IP to speak of
		h.Local = true
	default:
		return h, 0, 0, fmt.Errorf("proxyproto: v2 header with unknown address family 0x%02x", fam)
	}
	return h, n, 0, nil
}

// Append appends a header of the given version (1 or 2) saying src talked
// to dst. Invalid addresses, or a mix of IPv4 and IPv6, give v1 UNKNOWN or
// v2 LOCAL-style UNSPEC.
func Append(b []byte, version int, src, dst netip.AddrPort) []byte {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	known := src.IsValid() && dst.IsValid() && s.Is4() == d.Is4()
	if version == 1 {
		if !known {
			return append(b, "PROXY UNKNOWN\r\n"...)
		}
		proto := "TCP4"
		if s.Is6() {
			proto = "TCP6"
		}
		b = append(b, "PROXY "+proto+" "...)
		b = s.AppendTo(b)
		b = append(b, ' ')
		b = d.AppendTo(b)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(src.Port()), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(dst.Port()), 10)
		return append(b, "\r\n"...)
	}
	b = append(b, sigV2...)
	switch {
	case !known:
		return append(b, 0x21, 0x00, 0, 0) // PROXY, UNSPEC, no addresses
	case s.Is4():
		b = append(b, 0x21, 0x11, 0, 12)
		s4, d4 := s.As4(), d.As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
	default:
		b = append(b, 0x21, 0x21, 0, 36)
		s16, d16 := s.As16(), d.As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
