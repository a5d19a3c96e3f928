// Command demo shows l4lb doing its job, needing nothing but Go: it starts
// three small backends that greet with their name, runs the real l4lb binary
// in front of them, and shows in the terminal how connections spread by
// weight and fail over from the primary pool to the DR pool and back.
//
//	go build -o bin/l4lb ./cmd/l4lb && go run ./internal/demo -bin bin/l4lb
//
// (`make demo` does exactly that.)
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
)

func main() {
	bin := flag.String("bin", "bin/l4lb", "the l4lb binary to run")
	flag.Parse()
	if err := demo(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const configTmpl = `# Written by the l4lb demo.
[log]
level = "info"
format = "json"

[[listener]]
name = "demo"
listen = "127.0.0.1:0"
upstream = "app"
connect_timeout = "500ms"
drain_timeout = "2s"

[upstream.app]
method = "round_robin"
tries = 3

[upstream.app.health]
type = "tcp"
interval = "300ms"
timeout = "200ms"
rise = 2
fall = 2

[[upstream.app.pool]]
name = "primary"
priority = 0
hosts = [
  { address = "%s", weight = 3, id = "app-1" },
  { address = "%s", weight = 1, id = "app-2" },
]

[[upstream.app.pool]]
name = "dr"
priority = 10
hosts = [ { address = "%s", weight = 1, id = "dr-1" } ]
`

func demo(bin string) error {
	app1, err := testbackend.Start(testbackend.Tagger("app-1"))
	if err != nil {
		return err
	}
	app2, err := testbackend.Start(testbackend.Tagger("app-2"))
	if err != nil {
		return err
	}
	dr1, err := testbackend.Start(testbackend.Tagger("dr-1"))
	if err != nil {
		return err
	}
	defer dr1.Close()
	dir, err := os.MkdirTemp("", "l4lb-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "demo.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, configTmpl, app1.Addr(), app2.Addr(), dr1.Addr()), 0o644); err != nil {
		return err
	}

	step("Backends: app-1 (weight 3) and app-2 (weight 1) in pool \"primary\", dr-1 in pool \"dr\" (priority 10).")
	fmt.Printf("  config: %s\n", cfg)
	cmd := exec.Command(bin, "run", "-c", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w (run `make build` first)", bin, err)
	}
	defer cmd.Process.Kill()
	addr, logs, err := waitListening(stderr)
	if err != nil {
		return err
	}
	fmt.Printf("  l4lb (pid %d) listening on %s\n", cmd.Process.Pid, addr)
	hostUp := make(chan string, 10)
	go showLogs(logs, hostUp)

	step("20 connections: smooth weighted round robin spreads them 3:1 inside the primary pool.")
	show(spread(addr, 20))

	step("app-1 stops. Until a check notices, a connect to it is refused and the try moves on to app-2: the client never notices. Then app-1 is marked down.")
	app1Addr := app1.Addr()
	app1.Close()
	show(spread(addr, 8))

	step("app-2 stops too: the primary pool has no usable host, so traffic fails over to the dr pool.")
	app2.Close()
	show(spread(addr, 8))

	step("app-1 comes back on its port: after 2 good checks it is up, and traffic fails back to the primary pool.")
	app1, err = testbackend.StartAt(app1Addr, testbackend.Tagger("app-1"))
	if err != nil {
		return err
	}
	defer app1.Close()
	for host := ""; host != "app-1"; {
		select {
		case host = <-hostUp:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("app-1 not marked up within 10s")
		}
	}
	show(spread(addr, 8))

	step("SIGTERM: l4lb stops accepting, drains, exits 0.")
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("l4lb exited: %w", err)
	}
	fmt.Println("  l4lb exited 0. Demo done.")
	return nil
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

// waitListening reads l4lb's JSON log until the "listening" line and
// returns the bound address and the rest of the log.
func waitListening(r io.Reader) (string, *bufio.Scanner, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			fmt.Println("  l4lb |", sc.Text())
			continue
		}
		if line["message"] == "listening" {
			return fmt.Sprint(line["address"]), sc, nil
		}
	}
	return "", nil, fmt.Errorf("l4lb exited before listening")
}

// showLogs prints l4lb's log but for the per-connection lines, and says on
// hostUp which hosts came up.
func showLogs(sc *bufio.Scanner, hostUp chan<- string) {
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			fmt.Println("  l4lb |", sc.Text())
			continue
		}
		if line["level"] == "info" && line["message"] == "connection closed" {
			continue // one per connection: the tallies below say it better
		}
		if line["message"] == "host up" {
			select {
			case hostUp <- fmt.Sprint(line["host"]):
			default:
			}
		}
		fmt.Printf("  l4lb | %s: %v", line["level"], line["message"])
		for _, k := range []string{"pool", "host", "reason", "try", "duration"} {
			if v, ok := line[k]; ok {
				fmt.Printf(" %s=%v", k, v)
			}
		}
		fmt.Println()
	}
}

// spread opens n connections one after another and counts which backend
// greeted each.
func spread(addr string, n int) map[string]int {
	m := map[string]int{}
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			m["error: "+err.Error()]++
			continue
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			m["closed without a backend"]++
			continue
		}
		m[strings.TrimSpace(line)]++
	}
	time.Sleep(50 * time.Millisecond) // let l4lb's log lines for this step print first
	return m
}

func show(m map[string]int) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  %-8s %3d %s\n", k, m[k], strings.Repeat("#", m[k]))
	}
}
