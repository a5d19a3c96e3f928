// Command l4lb is a Layer-4 TCP/UDP connection balancer.
//
//	l4lb run   -c FILE   run with the config FILE
//	l4lb check -c FILE   validate FILE; exit 0 and "ok", or 1 and every problem
//	l4lb ctl ...         drive a running l4lb over its control socket
//	l4lb version         print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `usage: l4lb <command> [flags]

commands:
  run   -c FILE    run the balancer with the config FILE
  check -c FILE    validate FILE: prints "ok" (exit 0) or every problem (exit 1)
  ctl ...          drive a running l4lb over its control socket (l4lb ctl help)
  version          print the version

Default config file: /etc/l4lb/l4lb.toml. See config.example.toml for every key.

signals to "l4lb run":
  HUP              reload the config file (a bad one changes nothing)
  USR2             upgrade: start the binary now at this path with the
                   listening sockets; this process drains and exits once
                   the new one serves, or goes on serving if it fails
  TERM, INT        stop accepting, drain up to drain_timeout, exit 0

Under systemd (Type=notify) it sends READY, RELOADING, STOPPING, WATCHDOG
and, after an upgrade, MAINPID. Operating guide: docs/OPERATING.md
(installed in /usr/local/share/doc/l4lb or /usr/share/doc/l4lb).
`

const defaultConfig = "/etc/l4lb/l4lb.toml"

func main() {
	os.Exit(mainExit(os.Args[1:], os.Stdout, os.Stderr))
}

// mainExit runs the command line args and returns the exit code.
func mainExit(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		path, ok := configFlag("run", rest, stderr)
		if !ok {
			return 2
		}
		return run(path, stderr)
	case "check":
		path, ok := configFlag("check", rest, stderr)
		if !ok {
			return 2
		}
		return check(path, stdout, stderr)
	case "ctl":
		return ctlMain(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "l4lb", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "l4lb: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet("l4lb "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", defaultConfig, "config file")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "l4lb %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", false
	}
	return *path, true
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// printConfigErrors prints each joined error on its own line.
func printConfigErrors(w io.Writer, err error) {
	var j interface{ Unwrap() []error }
	if errors.As(err, &j) {
		for _, e := range j.Unwrap() {
			printConfigErrors(w, e)
		}
		return
	}
	fmt.Fprintln(w, err)
}
