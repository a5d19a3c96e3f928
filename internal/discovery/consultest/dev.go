package consultest

import (
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// StartDev runs a real agent, `bin agent -dev`, on free loopback ports
// (HTTP, DNS, server RPC, serf LAN and WAN, gRPC and gRPC TLS: none on a
// default, so that it does not collide with another agent) until the test
// ends, and returns its HTTP address once it has a leader. Tests call it
// when a consul binary is on PATH, and skip otherwise.
func StartDev(t testing.TB, bin string) string {
	t.Helper()
	ports := make([]int, 7)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	cmd := exec.Command(bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-dns-port", strconv.Itoa(ports[1]), "-server-port", strconv.Itoa(ports[2]),
		"-serf-lan-port", strconv.Itoa(ports[3]), "-serf-wan-port", strconv.Itoa(ports[4]), "-grpc-port", strconv.Itoa(ports[5]),
		// -dev listens for gRPC with TLS on 8503 unless told otherwise.
		"-grpc-tls-port", strconv.Itoa(ports[6]))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := hc.Get("http://" + addr + "/v1/status/leader"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && len(b) > 4 {
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the dev agent has no leader after 20s")
		}
	}
}
