package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/pool"
)

// Exit codes of l4lb ctl.
const (
	exitOK          = 0  // done
	exitRefused     = 1  // the server (or a local check) refused the request
	exitUnreachable = 2  // the socket cannot be reached, or the answer is not understood
	exitUsage       = 64 // bad command line (sysexits EX_USAGE), so a typo is never taken for a refusal
)

const ctlUsage = `usage: l4lb ctl [--socket PATH] [--json] COMMAND

Drives a running l4lb through its control socket (default
/run/l4lb/control.sock, or $L4LB_SOCKET). Flags may come anywhere.

  status                                 every host: state, weight, connections, bytes
  upstreams list                         every upstream, pool and host
  upstreams get U
  upstreams put U FILE.json              create or replace upstream U whole
  upstreams delete U
  pool add U P --priority N [--method M]
  pool set U P [--priority N] [--method M]
  pool delete U P
  host add U P ADDRESS [--weight N] [--id ID]
  host set U P HOST --weight N
  host delete U P HOST                   drain, then remove
  host down|up|drain U P HOST            down is sticky until up
  sessions                               live UDP sessions: client, host, age, datagrams
  events [--since N]                     follow the event feed (Ctrl-C ends)
  reload                                 re-read the config file
  reset                                  drop every live edit: back to the config file

HOST is a host's id (its address unless given one). --json prints the
server's JSON instead of tables. Methods: round_robin, least_conn, hash,
random2, fastest.

Exit status: 0 done; 1 the request was refused (the server says why);
2 l4lb cannot be reached; 64 bad usage.
`

// ctlMain runs "l4lb ctl ARGS" and returns the exit status.
func ctlMain(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runCtl(ctx, ctlEnv{args: args, stdout: stdout, stderr: stderr, getenv: os.Getenv, now: time.Now})
}

// ctlEnv is what ctl takes from the process, so tests can set it.
type ctlEnv struct {
	args           []string
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
}

// usageError is a bad command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// ctlFlags: which flags take a value. --json, --help and -h take none.
var ctlValued = map[string]bool{"socket": true, "priority": true, "method": true, "weight": true, "id": true, "since": true}

// parseCtlArgs splits args into positional words and flags (--name value,
// --name=value, -name too), wherever they appear; "--" ends flags.
func parseCtlArgs(args []string) (pos []string, flags map[string]string, err error) {
	flags = map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		val, hasVal := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, val, hasVal = k, v, true
		}
		switch {
		case name == "json" || name == "help" || name == "h":
			if hasVal {
				return nil, nil, usagef("--%s takes no value", name)
			}
		case ctlValued[name]:
			if !hasVal {
				if i+1 >= len(args) {
					return nil, nil, usagef("--%s needs a value", name)
				}
				i++
				val = args[i]
			}
		default:
			return nil, nil, usagef("unknown flag %s", a)
		}
		if _, dup := flags[name]; dup {
			return nil, nil, usagef("--%s given twice", name)
		}
		flags[name] = val
	}
	return pos, flags, nil
}

// ctl is one run of the command.
type ctl struct {
	ctlEnv
	c     *control.Client
	json  bool
	flags map[string]string
}

func runCtl(ctx context.Context, env ctlEnv) int {
	pos, flags, err := parseCtlArgs(env.args)
	if err != nil {
		fmt.Fprintf(env.stderr, "l4lb ctl: %v\n\n%s", err, ctlUsage)
		return exitUsage
	}
	_, h1 := flags["help"]
	_, h2 := flags["h"]
	if h1 || h2 || len(pos) > 0 && pos[0] == "help" {
		fmt.Fprint(env.stdout, ctlUsage)
		return exitOK
	}
	if len(pos) == 0 {
		fmt.Fprintf(env.stderr, "l4lb ctl: no command\n\n%s", ctlUsage)
		return exitUsage
	}
	socket := flags["socket"]
	if socket == "" {
		socket = env.getenv("L4LB_SOCKET")
	}
	if socket == "" {
		socket = control.DefaultSocket
	}
	_, asJSON := flags["json"]
	delete(flags, "socket")
	delete(flags, "json")
	k := &ctl{ctlEnv: env, c: control.NewClient(socket), json: asJSON, flags: flags}
	defer k.c.Close()

	err = k.run(ctx, pos)
	var ue usageError
	var se *control.StatusError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(env.stderr, "l4lb ctl: %v\n\n%s", err, ctlUsage)
		return exitUsage
	case errors.As(err, &se), errors.As(err, new(refusal)):
		fmt.Fprintf(env.stderr, "l4lb ctl: %v\n", err)
		return exitRefused
	}
	fmt.Fprintf(env.stderr, "l4lb ctl: cannot reach l4lb: %v (is it running? the socket is set with --socket or L4LB_SOCKET)\n", err)
	return exitUnreachable
}

// refusal is a request refused before it is sent (an unreadable file).
type refusal struct{ error }

// only checks that no flag outside names was given.
func (k *ctl) only(names ...string) error {
	for f := range k.flags {
		if !slices.Contains(names, f) {
			return usagef("--%s does not apply here", f)
		}
	}
	return nil
}

// intFlag parses --name as an integer; ok is false when absent.
func (k *ctl) intFlag(name string) (n int, ok bool, err error) {
	v, ok := k.flags[name]
	if !ok {
		return 0, false, nil
	}
	n, err = strconv.Atoi(v)
	if err != nil {
		return 0, false, usagef("--%s %q: not an integer", name, v)
	}
	return n, true, nil
}

// args checks the count of positional words after the verb.
func args(words []string, n int, shape string) error {
	if len(words) != n {
		return usagef("want: %s", shape)
	}
	return nil
}

func (k *ctl) run(ctx context.Context, pos []string) error {
	noun, rest := pos[0], pos[1:]
	verb := ""
	if len(rest) > 0 {
		verb, rest = rest[0], rest[1:]
	}
	switch noun {
	case "status":
		if err := errors.Join(k.only(), args(pos[1:], 0, "status")); err != nil {
			return err
		}
		st, err := k.c.Status(ctx)
		if err != nil {
			return err
		}
		return k.print(st, func(w io.Writer) {
			statusTable(w, st, k.now())
			if len(st.Listeners) > 0 {
				fmt.Fprintln(w)
				listenerTable(w, st.Listeners)
			}
			if len(st.Discovery) > 0 {
				fmt.Fprintln(w)
				discoveryTable(w, st.Discovery)
			}
			if st.Store != nil {
				fmt.Fprintln(w)
				fmt.Fprintln(w, storeLine(*st.Store))
			}
		})
	case "sessions":
		if err := errors.Join(k.only(), args(pos[1:], 0, "sessions")); err != nil {
			return err
		}
		ss, err := k.c.Sessions(ctx)
		if err != nil {
			return err
		}
		return k.print(ss, func(w io.Writer) { sessionTable(w, ss) })
	case "upstreams", "upstream":
		return k.upstreams(ctx, verb, rest)
	case "pool":
		return k.pool(ctx, verb, rest)
	case "host":
		return k.host(ctx, verb, rest)
	case "events":
		return k.events(ctx, pos[1:])
	case "reload", "reset":
		if err := errors.Join(k.only(), args(pos[1:], 0, noun)); err != nil {
			return err
		}
		f := k.c.Reload
		if noun == "reset" {
			f = k.c.Reset
		}
		if err := f(ctx); err != nil {
			return err
		}
		return k.print(map[string]string{"result": noun}, func(w io.Writer) { fmt.Fprintf(w, "%s: done\n", noun) })
	}
	return usagef("unknown command %q", noun)
}

func (k *ctl) upstreams(ctx context.Context, verb string, rest []string) error {
	if err := k.only(); err != nil {
		return err
	}
	switch verb {
	case "list", "":
		if err := args(rest, 0, "upstreams list"); err != nil {
			return err
		}
		us, err := k.c.Upstreams(ctx)
		if err != nil {
			return err
		}
		return k.print(map[string]any{"upstreams": us}, func(w io.Writer) { upstreamTable(w, us) })
	case "get":
		if err := args(rest, 1, "upstreams get UPSTREAM"); err != nil {
			return err
		}
		u, err := k.c.Upstream(ctx, rest[0])
		if err != nil {
			return err
		}
		return k.print(u, func(w io.Writer) { upstreamTable(w, []control.Upstream{u}) })
	case "put":
		if err := args(rest, 2, "upstreams put UPSTREAM FILE.json"); err != nil {
			return err
		}
		b, err := os.ReadFile(rest[1])
		if err != nil {
			return refusal{err}
		}
		var u control.Upstream
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&u); err != nil {
			return refusal{fmt.Errorf("%s: %w", rest[1], err)}
		}
		if u.Name == "" {
			u.Name = rest[0]
		} else if u.Name != rest[0] {
			return refusal{fmt.Errorf("%s names upstream %q, not %q", rest[1], u.Name, rest[0])}
		}
		out, created, err := k.c.PutUpstream(ctx, u)
		if err != nil {
			return err
		}
		what := "replaced"
		if created {
			what = "created"
		}
		return k.edited(out, "upstream %s %s", rest[0], what)
	case "delete":
		if err := args(rest, 1, "upstreams delete UPSTREAM"); err != nil {
			return err
		}
		if err := k.c.DeleteUpstream(ctx, rest[0]); err != nil {
			return err
		}
		return k.print(map[string]string{"deleted": rest[0]}, func(w io.Writer) { fmt.Fprintf(w, "upstream %s deleted\n", rest[0]) })
	}
	return usagef("upstreams: unknown verb %q (list, get, put, delete)", verb)
}

func (k *ctl) pool(ctx context.Context, verb string, rest []string) error {
	prio, hasPrio, err := k.intFlag("priority")
	if err != nil {
		return err
	}
	method, hasMethod := k.flags["method"]
	switch verb {
	case "add":
		if err := errors.Join(k.only("priority", "method"), args(rest, 2, "pool add UPSTREAM POOL --priority N [--method M]")); err != nil {
			return err
		}
		if !hasPrio {
			return usagef("pool add: --priority is required")
		}
		u, err := k.c.AddPool(ctx, rest[0], control.PoolSpec{Name: rest[1], Priority: prio, Method: pool.Method(method)})
		if err != nil {
			return err
		}
		return k.edited(u, "pool %s/%s added", rest[0], rest[1])
	case "set":
		if err := errors.Join(k.only("priority", "method"), args(rest, 2, "pool set UPSTREAM POOL [--priority N] [--method M]")); err != nil {
			return err
		}
		var p control.PoolPatch
		if hasPrio {
			p.Priority = &prio
		}
		if hasMethod {
			m := pool.Method(method)
			p.Method = &m
		}
		u, err := k.c.PatchPool(ctx, rest[0], rest[1], p)
		if err != nil {
			return err
		}
		return k.edited(u, "pool %s/%s changed", rest[0], rest[1])
	case "delete":
		if err := errors.Join(k.only(), args(rest, 2, "pool delete UPSTREAM POOL")); err != nil {
			return err
		}
		u, err := k.c.DeletePool(ctx, rest[0], rest[1])
		if err != nil {
			return err
		}
		return k.edited(u, "pool %s/%s deleted", rest[0], rest[1])
	}
	return usagef("pool: unknown verb %q (add, set, delete)", verb)
}

func (k *ctl) host(ctx context.Context, verb string, rest []string) error {
	weight, hasWeight, err := k.intFlag("weight")
	if err != nil {
		return err
	}
	switch verb {
	case "add":
		if err := errors.Join(k.only("weight", "id"), args(rest, 3, "host add UPSTREAM POOL ADDRESS [--weight N] [--id ID]")); err != nil {
			return err
		}
		h := control.HostSpec{Address: rest[2], ID: k.flags["id"], Weight: control.DefaultWeight}
		if hasWeight {
			h.Weight = weight
		}
		u, err := k.c.AddHost(ctx, rest[0], rest[1], h)
		if err != nil {
			return err
		}
		return k.edited(u, "host %s added to %s/%s", rest[2], rest[0], rest[1])
	case "set":
		if err := errors.Join(k.only("weight"), args(rest, 3, "host set UPSTREAM POOL HOST --weight N")); err != nil {
			return err
		}
		if !hasWeight {
			return usagef("host set: --weight is required")
		}
		u, err := k.c.PatchHost(ctx, rest[0], rest[1], rest[2], control.HostPatch{Weight: &weight})
		if err != nil {
			return err
		}
		return k.edited(u, "host %s weight set to %d", rest[2], weight)
	case "delete", "down", "up", "drain":
		if err := errors.Join(k.only(), args(rest, 3, "host "+verb+" UPSTREAM POOL HOST")); err != nil {
			return err
		}
		var u control.Upstream
		var err error
		msg := "host %s in %s/%s: "
		if verb == "delete" {
			u, err = k.c.RemoveHost(ctx, rest[0], rest[1], rest[2])
			msg += "draining, then removed"
		} else {
			u, err = k.c.HostAction(ctx, rest[0], rest[1], rest[2], control.Action(verb))
			msg += verb
		}
		if err != nil {
			return err
		}
		return k.edited(u, msg, rest[2], rest[0], rest[1])
	}
	return usagef("host: unknown verb %q (add, set, delete, down, up, drain)", verb)
}

func (k *ctl) events(ctx context.Context, rest []string) error {
	if err := errors.Join(k.only("since"), args(rest, 0, "events [--since N]")); err != nil {
		return err
	}
	since := uint64(control.Live)
	if v, ok := k.flags["since"]; ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return usagef("--since %q: not a sequence number", v)
		}
		since = n
	}
	enc := json.NewEncoder(k.stdout)
	return k.c.Events(ctx, since, func(e events.Event) error {
		if k.json {
			return enc.Encode(e)
		}
		where := strings.Trim(strings.Join([]string{e.Upstream, e.Pool, e.Host}, "/"), "/")
		_, err := fmt.Fprintf(k.stdout, "%s  #%-5d %-20s %s  %s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Seq, e.Kind, where, e.Reason)
		return err
	})
}

// print writes v as indented JSON with --json, else calls table.
func (k *ctl) print(v any, table func(io.Writer)) error {
	if k.json {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(k.stdout, "%s\n", b)
		return err
	}
	table(k.stdout)
	return nil
}

// edited reports an applied edit, then the upstream as it now is.
func (k *ctl) edited(u control.Upstream, format string, a ...any) error {
	return k.print(u, func(w io.Writer) {
		fmt.Fprintf(w, format+"\n\n", a...)
		if u.Name != "" {
			upstreamTable(w, []control.Upstream{u})
		}
	})
}

func upstreamTable(w io.Writer, us []control.Upstream) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tPOOL\tPRIORITY\tMETHOD\tHOST\tADDRESS\tWEIGHT\tSOURCE\tSTATE")
	for _, u := range us {
		for _, p := range u.Pools {
			m := p.Method
			if m == "" {
				m = u.Method
			}
			if m == "" {
				m = "round_robin"
			}
			if len(p.Hosts) == 0 {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t-\t-\t-\t-\t-\n", u.Name, p.Name, p.Priority, m)
			}
			for _, h := range p.Hosts {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", u.Name, p.Name, p.Priority, m, h.ID, h.Address, h.Weight, dash(string(h.Source)), h.State)
			}
		}
	}
	tw.Flush()
}

func statusTable(w io.Writer, st control.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tPOOL\tHOST\tSOURCE\tSTATE\tWEIGHT\tACTIVE\tTOTAL\tTO_HOST\tFROM_HOST\tFAILS\tSINCE\tREASON")
	for _, h := range st.Hosts {
		host := h.ID
		if h.ID != h.Address {
			host = h.ID + "=" + h.Address
		}
		state := h.State.String()
		if h.State == pool.StateDraining && !h.DrainDeadline.IsZero() {
			state += " (" + time.Duration(h.DrainRemaining).Round(100*time.Millisecond).String() + " left)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\n",
			h.Upstream, h.Pool, host, dash(string(h.Source)), state, h.Weight, h.Active, h.Total,
			humanBytes(h.BytesToHost), humanBytes(h.BytesFromHost), h.FailCount, age(h.Since, now), dash(h.Reason))
	}
	tw.Flush()
}

// storeLine is where the edits are kept, in one line:
//
//	store: local /var/lib/l4lb/edits.json, 2 edits
//	store: consul l4lb/prod/edits index 812, 3 edits, in sync (answered 4s ago)
//	store: consul l4lb/prod/edits index 790, 3 edits, NOT in sync: serving last_known_good; 4 failures: ...
func storeLine(st control.StoreStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "store: %s %s", st.Kind, dash(st.Key))
	if st.Kind == "consul" {
		fmt.Fprintf(&b, " index %d", st.Index)
	}
	fmt.Fprintf(&b, ", %d edits", st.Edits)
	if st.Kind != "consul" {
		return b.String()
	}
	if st.InSync {
		b.WriteString(", in sync")
		if st.Age != "" {
			fmt.Fprintf(&b, " (answered %s ago)", st.Age)
		}
		return b.String()
	}
	b.WriteString(", NOT in sync")
	var why []string
	if st.Source != "consul" {
		why = append(why, "serving "+dash(st.Source))
	}
	if st.Failures > 0 {
		why = append(why, plural(st.Failures, "failure"))
	}
	if st.LastError != "" {
		why = append(why, st.LastError)
	}
	if st.Age != "" {
		why = append(why, "last answer "+st.Age+" ago")
	}
	if len(why) > 0 {
		b.WriteString(": " + strings.Join(why, "; "))
	}
	return b.String()
}

func sessionTable(w io.Writer, ss []control.Session) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tCLIENT\tUPSTREAM\tPOOL\tHOST\tAGE\tIDLE\tDGRAMS_UP\tDGRAMS_DOWN\tBYTES_UP\tBYTES_DOWN")
	for _, x := range ss {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fs\t%.1fs\t%d\t%d\t%s\t%s\n", x.Listener, x.Client, x.Upstream, x.Pool, x.Host,
			x.Age, x.Idle, x.DatagramsUp, x.DatagramsDown, humanBytes(x.BytesUp), humanBytes(x.BytesDown))
	}
	tw.Flush()
}

// discoveryTable prints where each Consul pool's hosts come from.
func discoveryTable(w io.Writer, ds []control.DiscoveryStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tPOOL\tCONSUL\tSOURCE\tINDEX\tAGE\tHOSTS\tERROR")
	for _, d := range ds {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", d.Upstream, d.Pool, d.Watch, d.Source, d.Index, dash(d.Age), d.Hosts, dash(d.Error))
	}
	tw.Flush()
}

// listenerTable prints each listener's non-zero counters.
func listenerTable(w io.Writer, ls []control.ListenerStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tPROTOCOL\tADDRESS\tCOUNTERS")
	for _, l := range ls {
		keys := make([]string, 0, len(l.Counters))
		for k, v := range l.Counters {
			if v != 0 {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		var b strings.Builder
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s=%d", k, l.Counters[k])
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Name, l.Protocol, l.Address, dash(b.String()))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanBytes writes n in binary units: "512 B", "1.5 KiB", "5.0 MiB".
func humanBytes(n uint64) string {
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, unit := float64(n)/1024, 0
	for v >= 1024 && unit < 5 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[unit])
}

// age writes how long ago t was, to the second, in at most two units:
// "45s", "3m12s", "5h3m", "4d2h".
func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0).Truncate(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

// plural renders n things: "1 failure", "3 failures".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
