package control

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/rs/zerolog"
)

func TestSocketMode(t *testing.T) {
	for _, mode := range []os.FileMode{0, 0o660} {
		h := start(t, ServerConfig{Mode: mode}, zerolog.Nop())
		fi, err := os.Stat(h.sock)
		if err != nil {
			t.Fatal(err)
		}
		want := mode
		if want == 0 {
			want = 0o600
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != want {
			t.Errorf("mode %v, want socket %v", fi.Mode(), want)
		}
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	sock := filepath.Join(socketDir(t), "c.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // as a crashed run leaves it
	h := start(t, ServerConfig{Socket: sock}, zerolog.Nop())
	if code, _ := h.do(t, "GET", "/v1/status", nil); code != 200 {
		t.Fatalf("status %d", code)
	}
}

func TestLiveSocketNotStolen(t *testing.T) {
	sock := filepath.Join(socketDir(t), "c.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // the other process: accepts and hangs up
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	err = New(ServerConfig{Socket: sock}, newFake(), zerolog.Nop()).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("Run: %v", err)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Fatalf("the live socket was taken: %v", err)
	} else {
		c.Close()
	}
}

func TestNotASocketLeftAlone(t *testing.T) {
	sock := filepath.Join(socketDir(t), "c.sock")
	os.WriteFile(sock, []byte("precious"), 0o600)
	err := New(ServerConfig{Socket: sock}, newFake(), zerolog.Nop()).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Run: %v", err)
	}
	if b, _ := os.ReadFile(sock); string(b) != "precious" {
		t.Fatal("file was touched")
	}
}

// TestOtherUID connects as nobody with the real curl: refused by the file
// mode at 0600, closed by the SO_PEERCRED check at 0666, let in when listed.
func TestOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run curl as nobody")
	}
	needCurl(t)
	testbackend.Tool(t, "setpriv")
	asNobody := func(sock string) (int, string) {
		out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			"curl", "-sS", "--max-time", "5", "--unix-socket", sock, "http://l4lb/v1/status").CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	// Closed by SO_PEERCRED: curl sees either a failed connect (7: the close
	// beat its connect check), an empty reply (52) or a receive error (56).
	refused := []int{7, 52, 56}
	cases := []struct {
		name   string
		cfg    ServerConfig
		codes  []int // curl's exit code
		peerNo bool  // the server logged the refusal
	}{
		{"mode 0600", ServerConfig{}, []int{7}, false}, // connect(2): EACCES, the server never sees it
		{"mode 0666 not allowed", ServerConfig{Mode: 0o666}, refused, true},
		{"mode 0666 allowed uid", ServerConfig{Mode: 0o666, AllowUIDs: []int{65534}}, []int{0}, false},
		{"mode 0660 group", ServerConfig{Mode: 0o660, Group: "65534"}, []int{0}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := socketDir(t)
			os.Chmod(dir, 0o755) // let nobody reach the socket; the socket's own mode decides
			c.cfg.Socket = filepath.Join(dir, "c.sock")
			var log syncBuffer
			start(t, c.cfg, zerolog.New(&log))
			code, out := asNobody(c.cfg.Socket)
			if !slices.Contains(c.codes, code) || code == 0 && !strings.Contains(out, `"hosts"`) {
				t.Errorf("curl as nobody: exit %d %q, want exit in %v", code, out, c.codes)
			}
			logged := strings.Contains(log.String(), `"uid":65534,"pid":`)
			if logged != c.peerNo {
				t.Errorf("refusal logged: %v, want %v:\n%s", logged, c.peerNo, log.String())
			}
		})
	}
}
