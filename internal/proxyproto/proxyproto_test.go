package proxyproto

import (
	"bytes"
	"encoding/hex"
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
