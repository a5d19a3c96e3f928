//go:build !linux

package udp

import "net"

const oobSize = 0

// enablePktinfo is Linux-only for now: elsewhere a wildcard listener
// replies from the address the kernel's route prefers.
func enablePktinfo(*net.UDPConn) (bool, error) { return false, nil }

func replyOOB([]byte) []byte { return nil }
