package pool

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps pool a leaf: standard library only, and not even the parts of
// it that would pull logging or HTTP into the hot path.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found:", err)
	}
	out, err := exec.Command(goBin, "list", "-deps",
		"-f", "{{.ImportPath}} {{.Standard}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	const self = "github.com/l4lb/l4lb/pool"
	forbidden := map[string]bool{"log": true, "log/slog": true, "net": true, "net/http": true, "os/exec": true}
	seenSelf := false
	for line := range strings.Lines(string(out)) {
		path, std, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch {
		case path == self:
			seenSelf = true
		case std != "true":
			t.Errorf("pool depends on non-standard package %s", path)
		case forbidden[path]:
			t.Errorf("pool depends on %s, which a leaf package must not use", path)
		}
	}
	if !seenSelf {
		t.Errorf("go list output does not mention %s:\n%s", self, out)
	}
}
