package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/splice"
)

// epollFDs counts the epoll instances process pid holds open.
func epollFDs(t *testing.T, pid int) int { return anonFDs(t, pid, "anon_inode:[eventpoll]") }

// anonFDs counts pid's fds that link to the anonymous inode named.
func anonFDs(t *testing.T, pid int, name string) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == name {
			n++
		}
	}
	return n
}

// TestEngineLoops: [engine] loops sets how many event loops carry TCP
// connections, and its default is one per two of GOMAXPROCS. The count is
// read off the process: each loop holds an epoll fd of its own besides Go's
// netpoller's, from the first connection on. Unless the GOMAXPROCS
// variable is set, l4lb lowers GOMAXPROCS to the loop count.
func TestEngineLoops(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	for _, tc := range []struct {
		name, engine string
		procs        string // GOMAXPROCS in the environment; "" unsets it
		loops        int    // 0: the machine's default, as the ready line says
		goProcs      int    // 0: as many as the loops
	}{
		{"default, 4 procs", "", "4", 2, 4},
		{"default, 1 proc", "", "1", 1, 1},
		{"loops = 3", "\n[engine]\nloops = 3\n", "2", 3, 2},
		{"default, GOMAXPROCS unset", "", "", 0, 0},
		{"loops = 1, GOMAXPROCS unset", "\n[engine]\nloops = 1\n", "", 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "l4lb.toml")
			if err := os.WriteFile(cfg, []byte(lifecycleConfig(dir, echo.Addr(), "1s")+tc.engine), 0o644); err != nil {
				t.Fatal(err)
			}
			// Appended last, so it wins over the test's own environment.
			p := startProc(t, binPath, cfg, "GOMAXPROCS="+tc.procs)
			addr := fmt.Sprint(p.waitLog(t, "listening", 10*time.Second)["address"])
			ready := p.waitLog(t, "l4lb ready", 10*time.Second)
			loops, goProcs := tc.loops, tc.goProcs
			if loops == 0 {
				n, _ := ready["engine_loops"].(float64)
				if loops = int(n); loops < 1 {
					t.Fatalf("ready line says engine_loops %v", ready["engine_loops"])
				}
			}
			if goProcs == 0 {
				goProcs = loops
			}
			if ready["engine_loops"] != float64(loops) {
				t.Errorf("ready line says engine_loops %v, want %d", ready["engine_loops"], loops)
			}
			if ready["go_procs"] != float64(goProcs) {
				t.Errorf("ready line says go_procs %v, want %d", ready["go_procs"], goProcs)
			}
			for i := range 2 * loops {
				if err := echoThrough(addr, fmt.Sprintf("hello %d", i)); err != nil {
					t.Fatal(err)
				}
			}
			if n := epollFDs(t, p.cmd.Process.Pid) - 1; n != loops {
				t.Errorf("%d epoll fds besides the netpoller's, want %d loops", n, loops)
			}
			// Each loop batches its writes on an io_uring of its own
			// where the kernel allows it, and the ready line says how
			// it writes; this test process finds out the same way.
			writes := splice.RingWrites()
			if ready["engine_writes"] != writes {
				t.Errorf("ready line says engine_writes %v, want %q", ready["engine_writes"], writes)
			}
			rings := 0
			if writes == "io_uring" {
				rings = loops
			}
			if n := anonFDs(t, p.cmd.Process.Pid, "anon_inode:[io_uring]"); n != rings {
				t.Errorf("%d io_uring fds, want %d (engine writes: %s)", n, rings, writes)
			}
		})
	}
}
