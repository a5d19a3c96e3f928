package proxyproto

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// The examples of the specification (haproxy's proxy-protocol.txt, §2.1 and
// §2.2), byte for byte.
func TestAppendMatchesSpec(t *testing.T) {
	cases := []struct {
		name     string
		version  int
		src, dst netip.AddrPort
		want     string // v1 text, or v2 hex
	}{
		{"v1 tcp4", 1, ap("192.168.0.1:56324"), ap("192.168.0.11:443"), "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"},
		{"v1 tcp6", 1, ap("[2001:db8::1]:56324"), ap("[2001:db8::2]:443"), "PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"},
		{"v1 unknown", 1, netip.AddrPort{}, netip.AddrPort{}, "PROXY UNKNOWN\r\n"},
		{"v1 mixed families", 1, ap("192.168.0.1:1"), ap("[2001:db8::2]:443"), "PROXY UNKNOWN\r\n"},
		{"v1 mapped v4 is v4", 1, ap("[::ffff:10.0.0.1]:1"), ap("10.0.0.2:2"), "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"},
		{"v2 tcp4", 2, ap("192.168.0.1:56324"), ap("192.168.0.11:443"),
			"0d0a0d0a000d0a515549540a" + "21" + "11" + "000c" + "c0a80001" + "c0a8000b" + "dc04" + "01bb"},
		{"v2 tcp6", 2, ap("[2001:db8::1]:56324"), ap("[2001:db8::2]:443"),
			"0d0a0d0a000d0a515549540a" + "21" + "21" + "0024" +
				"20010db8000000000000000000000001" + "20010db8000000000000000000000002" + "dc04" + "01bb"},
		{"v2 unspec", 2, netip.AddrPort{}, netip.AddrPort{}, "0d0a0d0a000d0a515549540a" + "21" + "00" + "0000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Append(nil, c.version, c.src, c.dst)
			want := []byte(c.want)
			if c.version == 2 {
				want, _ = hex.DecodeString(c.want)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("got  %q\nwant %q", got, want)
			}
			// And it reads back.
			h, rest, err := Read(bytes.NewReader(append(got, "payload"...)))
			if err != nil {
				t.Fatal(err)
			}
			if string(rest) != "payload" {
				t.Fatalf("rest %q", rest)
			}
			if h.Local != !c.src.IsValid() && c.name != "v1 mixed families" {
				t.Fatalf("local = %v", h.Local)
			}
			if !h.Local && (h.Src.Addr().Unmap() != c.src.Addr().Unmap() || h.Src.Port() != c.src.Port() || h.Dst.Port() != c.dst.Port()) {
				t.Fatalf("read back %+v", h)
			}
		})
	}
}

// The literal examples of haproxy's proxy-protocol.txt, read back: the
// longest lines of §2.1, UNKNOWN with addresses (the receiver ignores
// everything up to the CRLF), and v2 with TLVs (§2.2.7, skipped by the
// length field), LOCAL (§2.2: addresses, if any, ignored) and unix (§2.2,
// 216 address bytes). Every case is followed by stream bytes that must
// come back untouched as rest.
func TestReadSpecExamples(t *testing.T) {
	const ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	sig := "0d0a0d0a000d0a515549540a"
	v2 := func(s string) string {
		b, err := hex.DecodeString(sig + s)
		if err != nil {
			panic(err)
		}
		return string(b)
	}
	tlv := func(typ byte, value string) string {
		return fmt.Sprintf("%02x%04x", typ, len(value)) + hex.EncodeToString([]byte(value))
	}
	v4addrs := "c0a80001" + "c0a8000b" + "dc04" + "01bb" // 192.168.0.1:56324 -> 192.168.0.11:443
	// ALPN "h2", AUTHORITY "example.com", NOOP padding, UNIQUE_ID, and an
	// SSL TLV with its client byte, verify word and a VERSION sub-TLV.
	tlvs := tlv(0x01, "h2") + tlv(0x02, "example.com") + tlv(0x04, "\x00\x00\x00") + tlv(0x05, "id-1234") +
		tlv(0x20, "\x07"+"\x00\x00\x00\x00"+"\x21\x00\x07TLSv1.3")
	crc := func(hdr string) string {
		// PP2_TYPE_CRC32C: the CRC32c of the whole header with the
		// checksum field zeroed; a receiver may check it, l4lb does not.
		zero := v2(hdr + "030004" + "00000000")
		sum := crc32.Checksum([]byte(zero), crc32.MakeTable(crc32.Castagnoli))
		return hdr + fmt.Sprintf("030004%08x", sum)
	}
	length := func(body string) string { return fmt.Sprintf("%04x", len(body)/2) }

	cases := []struct {
		name      string
		in        string
		wantLocal bool
		src, dst  string // when not local
	}{
		{"v1 tcp4 longest", "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", false,
			"255.255.255.255:65535", "255.255.255.255:65535"},
		{"v1 tcp6 longest (104 bytes)", "PROXY TCP6 " + ffff + " " + ffff + " 65535 65535\r\n", false,
			"[" + ffff + "]:65535", "[" + ffff + "]:65535"},
		{"v1 unknown", "PROXY UNKNOWN\r\n", true, "", ""},
		{"v1 unknown worst case (107 bytes)", "PROXY UNKNOWN " + ffff + " " + ffff + " 65535 65535\r\n", true, "", ""},
		{"v1 unknown with v4 addresses", "PROXY UNKNOWN 192.168.0.1 192.168.0.11 56324 443\r\n", true, "", ""},
		{"v2 tcp4 with TLVs", v2("2111" + length(v4addrs+tlvs) + v4addrs + tlvs), false,
			"192.168.0.1:56324", "192.168.0.11:443"},
		{"v2 tcp4 with a CRC32C TLV", v2(crc("2111" + length(v4addrs+tlvs+"03000400000000") + v4addrs + tlvs)), false,
			"192.168.0.1:56324", "192.168.0.11:443"},
		{"v2 tcp6 with TLVs", v2("2121" + length(strings.Repeat("ff", 32)+"ffffffff"+tlvs) + strings.Repeat("ff", 32) + "ffffffff" + tlvs), false,
			"[" + ffff + "]:65535", "[" + ffff + "]:65535"},
		{"v2 udp4", v2("2112000c" + v4addrs), false, "192.168.0.1:56324", "192.168.0.11:443"},
		{"v2 local, no addresses", v2("20000000"), true, "", ""},
		{"v2 local with tcp4 addresses and TLVs (ignored)", v2("2011" + length(v4addrs+tlvs) + v4addrs + tlvs), true, "", ""},
		{"v2 local with tcp6 addresses", v2("20210024" + strings.Repeat("00", 36)), true, "", ""},
		{"v2 proxy unspec with TLVs", v2("2100" + length(tlvs) + tlvs), true, "", ""},
		{"v2 unix stream (216 address bytes)", v2("213100d8" + strings.Repeat("2f", 216)), true, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const stream = "\x00stream bytes\r\n"
			for _, r := range []io.Reader{
				strings.NewReader(c.in + stream),
				iotest.OneByteReader(strings.NewReader(c.in + stream)),
			} {
				h, rest, err := Read(r)
				if err != nil {
					t.Fatal(err)
				}
				tail, _ := io.ReadAll(r)
				if got := string(rest) + string(tail); got != stream {
					t.Fatalf("stream after the header = %q, want %q", got, stream)
				}
				if h.Local != c.wantLocal {
					t.Fatalf("local = %v, want %v (%+v)", h.Local, c.wantLocal, h)
				}
				if !c.wantLocal && (h.Src != ap(c.src) || h.Dst != ap(c.dst)) {
					t.Fatalf("read %v -> %v, want %s -> %s", h.Src, h.Dst, c.src, c.dst)
				}
				if c.wantLocal && (h.Src.IsValid() || h.Dst.IsValid()) {
					t.Fatalf("local header with addresses %+v", h)
				}
			}
			h, n, more, err := Parse([]byte(c.in + stream))
			if err != nil || more != 0 || n != len(c.in) {
				t.Fatalf("Parse: %+v n=%d more=%d err=%v, want n=%d", h, n, more, err, len(c.in))
			}
		})
	}
	// The boundary of §2.1: 107 bytes is the longest line a receiver
	// accepts; one more is an error, not a wait for more bytes.
	worst := "PROXY UNKNOWN " + ffff + " " + ffff + " 65535 65535\r\n"
	if len(worst) != 107 {
		t.Fatalf("worst case is %d bytes, the spec says 107", len(worst))
	}
	if _, _, err := Read(strings.NewReader("PROXY UNKNOWN " + ffff + " " + ffff + " 65535 655350\r\n")); err == nil || !strings.Contains(err.Error(), "longer than 107") {
		t.Fatalf("108-byte line: %v", err)
	}
	if _, _, err := Read(strings.NewReader(worst[:106] + "x" + "\r\n")); err == nil {
		t.Fatal("no CRLF within 107 bytes accepted")
	}
	// And the writer produces the longest v1 lines byte for byte.
	if got := string(Append(nil, 1, ap("["+ffff+"]:65535"), ap("["+ffff+"]:65535"))); got != cases[1].in {
		t.Fatalf("Append v1 tcp6: %q", got)
	}
	if got := string(Append(nil, 1, ap("255.255.255.255:65535"), ap("255.255.255.255:65535"))); got != cases[0].in {
		t.Fatalf("Append v1 tcp4: %q", got)
	}
}

func TestReadV2Local(t *testing.T) {
	b, _ := hex.DecodeString("0d0a0d0a000d0a515549540a" + "20" + "00" + "0000")
	h, _, err := Read(bytes.NewReader(b))
	if err != nil || !h.Local || h.Version != 2 {
		t.Fatalf("LOCAL: %+v, %v", h, err)
	}
}

// Headers arriving a byte at a time (TCP may split them anywhere) parse the
// same, and nothing past the header is consumed.
func TestReadSplit(t *testing.T) {
	for _, hdr := range [][]byte{
		Append(nil, 1, ap("10.1.2.3:4000"), ap("10.9.9.9:80")),
		Append(nil, 2, ap("[2001:db8::7]:4000"), ap("[2001:db8::8]:80")),
		[]byte("PROXY UNKNOWN\r\n"),
	} {
		r := iotest.OneByteReader(io.MultiReader(bytes.NewReader(hdr), strings.NewReader("GET /")))
		h, rest, err := Read(r)
		if err != nil {
			t.Fatalf("%q: %v", hdr, err)
		}
		tail, _ := io.ReadAll(r)
		if got := string(rest) + string(tail); got != "GET /" {
			t.Fatalf("%q: stream after header = %q", hdr, got)
		}
		_ = h
	}
}

func TestReadErrors(t *testing.T) {
	v2 := func(s string) string { b, _ := hex.DecodeString("0d0a0d0a000d0a515549540a" + s); return string(b) }
	cases := []struct{ name, in, want string }{
		{"no header", "GET / HTTP/1.1\r\n\r\n", "no PROXY protocol header"},
		{"empty", "", "closed before a PROXY header"},
		{"truncated v1", "PROXY TCP4 1.2.3.4", "closed inside a PROXY header"},
		{"v1 too long", "PROXY TCP4 " + strings.Repeat("1", 200) + "\r\n", "longer than 107"},
		{"v1 bad proto", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"},
		{"v1 bad ip", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "1.2.3"},
		{"v1 v6 in tcp4", "PROXY TCP4 ::1 ::1 1 2\r\n", "non-IPv4"},
		{"v1 bad port", "PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n", "bad port"},
		{"v1 leading zero port", "PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "bad port"},
		{"v1 double space", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "want PROXY"},
		{"v2 version 1", v2("11110000"), "version 1"},
		{"v2 bad command", v2("2f110000"), "unknown command"},
		{"v2 bad family", v2("21990000"), "unknown address family"},
		{"v2 short v4", v2("21110004" + "01020304"), "want 12"},
		{"v2 too long", v2("2111ffff"), "more than"},
		{"v2 truncated", v2("2111000c0102"), "closed inside"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Read(strings.NewReader(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want it to say %q", err, c.want)
			}
		})
	}
}

// FuzzRead: no input panics or hangs; a header that parses re-encodes to one
// that parses to the same addresses.
func FuzzRead(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(Append(nil, 2, ap("192.168.0.1:56324"), ap("192.168.0.11:443")))
	f.Add(Append(nil, 2, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"))
	// The 107-byte worst case of §2.1, and v4 addresses followed by an ALPN TLV.
	f.Add([]byte("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x11\xc0\xa8\x00\x01\xc0\xa8\x00\x0b\xdc\x04\x01\xbb\x01\x00\x02h2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, rest, err := Read(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(rest) > len(b) {
			t.Fatalf("rest longer than input")
		}
		if h.Local {
			return
		}
		again, _, err := Read(bytes.NewReader(Append(nil, h.Version, h.Src, h.Dst)))
		if err != nil {
			t.Fatalf("re-encoded header does not parse: %v", err)
		}
		if again.Src.Addr().Unmap() != h.Src.Addr().Unmap() || again.Src.Port() != h.Src.Port() ||
			again.Dst.Addr().Unmap() != h.Dst.Addr().Unmap() || again.Dst.Port() != h.Dst.Port() {
			t.Fatalf("round trip %+v -> %+v", h, again)
		}
	})
}
