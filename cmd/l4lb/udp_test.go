package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/rs/zerolog"
)

// TestListenUDP: the dns example of config.example.toml, uncommented,
// loads and binds a UDP listener with its settings.
func TestListenUDP(t *testing.T) {
	b, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "# [[listener]]\n# name = \"dns\"")
	if i < 0 {
		t.Fatal("no dns example in config.example.toml")
	}
	var src strings.Builder
	for _, line := range strings.Split(text[i:], "\n") {
		src.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "#"), " ") + "\n")
	}
	cfgText := strings.NewReplacer(`"0.0.0.0:53"`, `"127.0.0.1:0"`).Replace(src.String())
	path := filepath.Join(t.TempDir(), "l4lb.toml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("dns example: %v", err)
	}
	lc := cfg.Listeners[0]
	ups := buildUpstreams(cfg)
	l, err := listen(lc, cfg.Upstreams[lc.Upstream], ups[lc.Upstream], zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ul, ok := l.(*udp.Listener)
	if !ok {
		t.Fatalf("listen built a %T", l)
	}
	s := ul.Settings()
	if s.Responses != 1 || s.MaxSessions != 100000 || s.IdleTimeout != 30*time.Second || s.Upstream != ups["dns"] {
		t.Errorf("settings = %+v", s)
	}
	if l.Addr().Network() != "udp" {
		t.Errorf("bound %s", l.Addr().Network())
	}
}
