//go:build linux

package bench

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// nginxStream is where Debian's libnginx-mod-stream puts the stream module.
const nginxStream = "/usr/lib/nginx/modules/ngx_stream_module.so"

// debian maps what the suite runs to the Debian package that provides it.
var debian = []struct{ tool, pkg string }{
	{"haproxy", "haproxy"},
	{"nginx", "nginx"},
	{nginxStream, "libnginx-mod-stream"},
	{"redis-server", "redis-server"},
	{"redis-benchmark", "redis-tools"},
	{"iperf3", "iperf3"},
	{"prlimit", "util-linux"},
}

// services that Debian's packages start on install when systemd runs; the
// suite starts its own, so it stops and disables the ones its install started.
var debianServices = map[string]string{"haproxy": "haproxy", "nginx": "nginx", "redis-server": "redis-server", "iperf3": "iperf3"}

// haveTools reports which tools are present. perf is optional (syscalls per
// request) and never installed.
func haveTools() map[string]bool {
	have := map[string]bool{}
	for _, d := range debian {
		have[d.tool] = present(d.tool)
	}
	have["perf"] = present("perf")
	return have
}

func present(tool string) bool {
	if strings.HasPrefix(tool, "/") {
		_, err := os.Stat(tool)
		return err == nil
	}
	_, err := exec.LookPath(tool)
	return err == nil
}

// ensureTools installs the missing packages with apt-get when install is set
// (as root, or through sudo), and fails with the command to run otherwise.
func ensureTools(install bool, logf func(string, ...any)) error {
	var pkgs []string
	for _, d := range debian {
		if !present(d.tool) && !slices.Contains(pkgs, d.pkg) {
			pkgs = append(pkgs, d.pkg)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	cmd := "apt-get install -y --no-install-recommends " + strings.Join(pkgs, " ")
	if !install {
		return fmt.Errorf("bench: missing packages; install them with: %s", cmd)
	}
	var pre []string
	if os.Getuid() != 0 {
		if !present("sudo") {
			return fmt.Errorf("bench: need root or sudo to run: %s", cmd)
		}
		pre = []string{"sudo"}
	}
	if !present("apt-get") {
		return fmt.Errorf("bench: no apt-get; install the equivalents of: %s", strings.Join(pkgs, " "))
	}
	logf("installing %s", strings.Join(pkgs, " "))
	run := func(argv ...string) error {
		argv = append(pre, argv...)
		c := exec.Command(argv[0], argv[1:]...)
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
		}
		return nil
	}
	if err := run("apt-get", "update", "-qq"); err != nil {
		return err
	}
	if err := run(append([]string{"apt-get", "install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...); err != nil {
		return err
	}
	// The packages may have started their own daemons (on ports 80, 6379,
	// 5201): the suite runs its own copies, so stop what this install started.
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		for _, p := range pkgs {
			if s, ok := debianServices[p]; ok {
				_ = run("systemctl", "disable", "--now", s)
				logf("stopped and disabled the %s service the package started", s)
			}
		}
	}
	for _, d := range debian {
		if !present(d.tool) {
			return fmt.Errorf("bench: %s still missing after installing %s", d.tool, d.pkg)
		}
	}
	return nil
}
