package testbackend

import (
	"os"
	"os/exec"
	"testing"
)

// Tool returns the path of the program name (redis-server, curl, haproxy,
// ...), which tests run as the real peer of what they check. When it is not
// installed the test is skipped, except under CI (CI set, as .ci/run's
// environment has it): there `make test` has installed every program the
// tests use (scripts/test-deps.sh), so a missing one is a broken install
// step, and skipping would hide it behind a green run.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} { // not on every PATH
		if p, err2 := exec.LookPath(dir + "/" + name); err2 == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed: `make test` installs it (scripts/test-deps.sh): %v", name, err)
	}
	t.Skipf("%s is not installed; `make test` installs it: %v", name, err)
	return ""
}

// EngineGoroutine is the function of splice's event-loop goroutines, which
// live as long as the process (like Go's netpoller): goleak checks of
// packages that run sessions ignore it (goleak.IgnoreAnyFunction: its top
// frame is the syscall it waits in).
const EngineGoroutine = "github.com/l4lb/l4lb/splice.(*loop).run"
