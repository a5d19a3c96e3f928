// Package l4lbtest runs the real l4lb binary for end-to-end tests: it builds
// it once, starts it on a config (optionally under a wrapper such as
// prlimit), reads its JSON log line by line so tests can wait for events
// instead of sleeping, and reads a process's CPU time, memory and fds from
// /proc.
package l4lbtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Build compiles ./cmd/l4lb of this module into dir and returns the path.
func Build(dir string, race bool) (string, error) {
	mod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	root := filepath.Dir(strings.TrimSpace(string(mod)))
	bin := filepath.Join(dir, "l4lb")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/l4lb")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Proc is a running l4lb.
type Proc struct {
	Cmd    *exec.Cmd
	Addrs  map[string]string // listener name -> bound address
	socket string
	lines  chan map[string]any
	exit   chan error
}

// Start writes config to a file, runs `bin run -c FILE` (after wrap, e.g.
// "prlimit", "--nofile=256:256") and waits for "l4lb ready". The process is
// killed when the test ends if it is still running.
func Start(t testing.TB, bin, config string, wrap ...string) *Proc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "l4lb.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string(nil), wrap...), bin, "run", "-c", path)
	p := &Proc{
		Cmd:   exec.Command(args[0], args[1:]...),
		Addrs: map[string]string{},
		lines: make(chan map[string]any, 100000),
		exit:  make(chan error, 1),
	}
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.readLog(stderr)
	t.Cleanup(func() {
		p.Cmd.Process.Kill()
		err := <-p.exit
		p.exit <- err
	})
	for {
		line := p.Next(t, 60*time.Second)
		if line == nil {
			t.Fatal("l4lb exited before it was ready")
		}
		switch line["message"] {
		case "listening":
			p.Addrs[fmt.Sprint(line["listener"])] = fmt.Sprint(line["address"])
		case "control API listening":
			p.socket = fmt.Sprint(line["socket"])
		case "l4lb ready":
			return p
		}
	}
}

// Socket returns the control socket path named in the config ("" if none).
func (p *Proc) Socket() string { return p.socket }

// Pid returns the process id of l4lb (through a wrapper such as prlimit,
// which execs it, it is the same process).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

func (p *Proc) readLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			line = map[string]any{"message": sc.Text(), "raw": true}
		}
		select {
		case p.lines <- line:
		default: // never block l4lb on its own log
		}
	}
	close(p.lines)
	p.exit <- p.Cmd.Wait()
}

// Next returns the next log line, or nil once l4lb has exited.
func (p *Proc) Next(t testing.TB, within time.Duration) map[string]any {
	t.Helper()
	select {
	case line := <-p.lines:
		return line
	case <-time.After(within):
		t.Fatalf("no log line from l4lb within %v", within)
		return nil
	}
}

// Drain returns the log lines already read, without waiting.
func (p *Proc) Drain() []map[string]any {
	var out []map[string]any
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return out
			}
			out = append(out, line)
		default:
			return out
		}
	}
}

// WaitLog waits for a line whose message is msg.
func (p *Proc) WaitLog(t testing.TB, msg string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		line := p.Next(t, time.Until(deadline))
		if line == nil {
			t.Fatalf("l4lb exited before logging %q", msg)
		}
		if line["message"] == msg {
			return line
		}
	}
}

// WaitExit waits for l4lb to exit (reading the rest of its log) and
// returns how it exited.
func (p *Proc) WaitExit(t testing.TB, within time.Duration) error {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case _, ok := <-p.lines:
			if ok {
				continue
			}
			err := <-p.exit
			p.exit <- err
			return err
		case <-deadline:
			t.Fatalf("l4lb did not exit within %v", within)
		}
	}
}

// CPUTime returns the user+system CPU time a process has used.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the ")" that ends the command name: state is field 3,
	// utime 14, stime 15 (1-based, man 5 proc).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// RSS returns a process's resident memory in bytes.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// FDs returns the number of open fds of a process.
func FDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}
