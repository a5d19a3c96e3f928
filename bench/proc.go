//go:build linux

package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a process the suite started and therefore owns. It is stopped by its
// own PID, never by name.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string        // path of the file that holds its stdout and stderr
	done chan struct{} // closed when Wait returns
	err  error         // Wait's error, valid after done
}

// startProc starts argv with its output in dir/name.log. The child gets its own
// process group, so a Ctrl-C in the terminal reaches the suite alone and the
// suite stops its children in order; Pdeathsig kills a child if the suite dies
// without cleaning up.
func startProc(dir, name string, argv ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *proc) wait() {
	p.err = p.cmd.Wait()
	close(p.done)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process's PID, waits up to 5 s, then SIGKILLs it.
// It is safe to call more than once.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last lines of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100
// on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) without cgo).
const clkTck = 100

// statFields returns the fields of /proc/PID/stat after the command name, so
// index 0 is field 3 (state), 1 is ppid, 11 is utime and 12 is stime.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	return statFieldsOf(b)
}

// statFieldsOf splits after the last ')': the command name may hold spaces and
// parentheses.
func statFieldsOf(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return nil, errors.New("stat: no ')'")
	}
	return strings.Fields(string(b[i+2:])), nil
}

// parseCPU reads utime+stime from the fields statFields returns.
func parseCPU(f []string) (time.Duration, error) {
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+s) * time.Second / clkTck, nil
}

// family returns pid and its direct children (nginx's workers).
func family(pid int) []int {
	pids := []int{pid}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil || c == pid {
			continue
		}
		f, err := statFields(c)
		if err != nil || len(f) < 2 {
			continue
		}
		if pp, _ := strconv.Atoi(f[1]); pp == pid {
			pids = append(pids, c)
		}
	}
	return pids
}

// cpuOf sums utime+stime over pids; a PID that has gone counts 0.
func cpuOf(pids []int) time.Duration {
	var t time.Duration
	for _, p := range pids {
		if f, err := statFields(p); err == nil {
			if d, err := parseCPU(f); err == nil {
				t += d
			}
		}
	}
	return t
}

// rssOf sums VmRSS (bytes) over pids.
func rssOf(pids []int) int64 {
	var n int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		n += parseVmRSS(b)
	}
	return n
}

func parseVmRSS(status []byte) int64 {
	for _, l := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest) // "1234 kB"
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// fdsOf counts the open fds over pids.
func fdsOf(pids []int) int {
	n := 0
	for _, p := range pids {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		if err == nil {
			n += len(ents)
		}
	}
	return n
}

// busyShare samples /proc/stat for d and returns the share of all CPUs that
// was busy (not idle or iowait). Run before the load starts, it tells whether
// something else on the machine competes with the benchmark.
func busyShare(d time.Duration) float64 {
	read := func() (busy, total int64) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		for i, x := range f[1:] {
			v, _ := strconv.ParseInt(x, 10, 64)
			total += v
			if i != 3 && i != 4 {
				busy += v
			}
		}
		return busy, total
	}
	b0, t0 := read()
	time.Sleep(d)
	b1, t1 := read()
	if t1 <= t0 {
		return 0
	}
	return float64(b1-b0) / float64(t1-t0)
}
