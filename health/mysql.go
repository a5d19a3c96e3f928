package health

import (
	"bytes"
	"errors"
	"fmt"
)

// maxGreeting bounds the greeting packet we accept; real ones are about 100 bytes.
const maxGreeting = 4096

// parseGreeting checks the payload of a MySQL/MariaDB server's first packet
// and returns the server version. A valid greeting is a protocol 10
// handshake (HandshakeV10): 0x0a, a NUL-terminated version, a 4-byte thread
// id, 8 bytes of auth data, a 0 filler and 2 bytes of capability flags, then
// optional fields we do not need. A server that refuses us (too many
// connections, host not allowed, host blocked) sends an error packet instead:
// 0xff, a 2-byte error code, the message.
func parseGreeting(p []byte) (version string, err error) {
	if len(p) == 0 {
		return "", errors.New("empty packet")
	}
	switch p[0] {
	case 0xff:
		if len(p) < 3 {
			return "", errors.New("short error packet")
		}
		code := int(p[1]) | int(p[2])<<8
		msg := p[3:]
		if len(msg) >= 6 && msg[0] == '#' {
			msg = msg[6:] // SQL state
		}
		return "", fmt.Errorf("error packet %d: %s", code, show(msg))
	case 10:
	default:
		return "", fmt.Errorf("protocol version %d, want 10", p[0])
	}
	end := bytes.IndexByte(p[1:], 0)
	if end < 0 {
		return "", errors.New("server version not terminated")
	}
	version = string(p[1 : 1+end])
	rest := p[1+end+1:]
	if len(rest) < 4+8+1+2 {
		return "", fmt.Errorf("handshake truncated after version %s", show([]byte(version)))
	}
	if rest[12] != 0 {
		return "", errors.New("bad filler byte in handshake")
	}
	return version, nil
}
