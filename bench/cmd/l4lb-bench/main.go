//go:build linux

// Command l4lb-bench measures l4lb against the direct path, HAProxy and nginx
// on loopback and prints the figures with their ratios. See bench/doc.go and
// docs/PERFORMANCE.md.
//
//	l4lb-bench -bin bin/l4lb            # quick mode, under 5 minutes
//	l4lb-bench -bin bin/l4lb -full      # 3 repetitions, longer runs
//	l4lb-bench -bin bin/l4lb -smoke     # a few seconds, direct and l4lb only
//	l4lb-bench -smoke -only udp         # only the udp scenario (-only bulk,redis,udp,idle)
//	l4lb-bench -smoke -only udp -udp-time 5s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/bench"
)

func main() {
	var o bench.Options
	out := flag.String("o", "", "also write the results to this file (default bench/results/<timestamp>.txt; \"-\" = none)")
	noInstall := flag.Bool("no-install", false, "fail instead of installing missing Debian packages")
	flag.StringVar(&o.Bin, "bin", "bin/l4lb", "the l4lb binary")
	flag.BoolVar(&o.Full, "full", false, "full mode: 3 repetitions, longer runs, 10 000 idle connections")
	flag.BoolVar(&o.Smoke, "smoke", false, "smoke mode: direct and l4lb only, a few seconds, installs nothing")
	flag.DurationVar(&o.UDPTime, "udp-time", 0, "how long the udp scenario runs (default: 1s smoke, 3s quick, 8s full)")
	only := flag.String("only", "", "comma-separated scenarios to run (bulk, redis, udp, idle); empty = all")
	flag.Parse()
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	o.Install = !*noInstall
	o.Log = os.Stderr
	if *out == "" {
		*out = filepath.Join("bench", "results", time.Now().Format("20060102-150405")+".txt")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, o)
	if rep != nil && len(rep.Figures()) > 0 {
		s := rep.String()
		fmt.Print(s)
		if *out != "-" {
			if werr := write(*out, s); werr != nil {
				fmt.Fprintln(os.Stderr, "l4lb-bench:", werr)
			} else {
				fmt.Fprintln(os.Stderr, "l4lb-bench: results in", *out)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
		os.Exit(1)
	}
}

func write(path, s string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
