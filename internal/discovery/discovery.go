package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"
)

// ErrDiscovery prefixes the errors of this package.
var ErrDiscovery = errors.New("discovery")

// Config is how to reach Consul and how to watch it. Durations that are
// zero take the default named beside them.
type Config struct {
	Address    string // host:port; "" = 127.0.0.1:8500
	Scheme     string // http | https; "" = http
	Token      string // ACL token; "" = TokenFile, then $CONSUL_HTTP_TOKEN
	TokenFile  string // read once, by New
	Datacenter string // for watches that name none; "" = the agent's
	CAFile     string
	CertFile   string
	KeyFile    string
	SkipVerify bool

	Wait           time.Duration // blocking query wait; 0 = 30s
	BackoffMin     time.Duration // first retry delay; 0 = 1s
	BackoffMax     time.Duration // retry delay cap; 0 = 60s
	StartupTimeout time.Duration // first answer wait before the last-known-good copy is used; 0 = 3s
	// Margin is added to wait + wait/16 to make each request's deadline; 0 = 5s.
	Margin time.Duration
	// EmptyGrace: an empty answer replaces a set that was not empty only
	// once empty answers have lasted this long, over two answers at least;
	// a non-empty answer in between starts over. 0 = 10s.
	EmptyGrace time.Duration

	StateDir string // where last-known-good copies are kept; "" = not kept
}

// SetDefaults fills in every zero field with its default. New calls it;
// other users of the same Consul settings (the fleet store) do too.
func (c *Config) SetDefaults() { c.defaults() }

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Wait, 30*time.Second)
	def(&c.BackoffMin, time.Second)
	def(&c.BackoffMax, time.Minute)
	def(&c.StartupTimeout, 3*time.Second)
	def(&c.Margin, 5*time.Second)
	def(&c.EmptyGrace, 10*time.Second)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.Address == "" {
		c.Address = "127.0.0.1:8500"
	}
	if c.Scheme == "" {
		c.Scheme = "http"
	}
}

// RequestTimeout is the deadline of one blocking query that waits wait:
// Consul may hold it for wait plus up to wait/16 of jitter.
func (c *Config) RequestTimeout(wait time.Duration) time.Duration {
	return wait + wait/16 + c.Margin
}

// Watch is what a pool follows. Use Key to compare watches: Tags makes the
// struct itself not comparable.
type Watch struct {
	Service     string
	Tags        []string // every one must be on an instance; sorted, no duplicates
	Datacenter  string   // "" = Config.Datacenter
	PassingOnly bool     // only instances whose checks pass or warn
	Near        string   // node name or "_agent": the answer is sorted by RTT
}

// Key identifies the watch: "redis?dc=dc2&passing=1&tag=primary".
func (w Watch) Key() string {
	v := url.Values{}
	for _, t := range w.Tags {
		v.Add("tag", t)
	}
	if w.Datacenter != "" {
		v.Set("dc", w.Datacenter)
	}
	if w.PassingOnly {
		v.Set("passing", "1")
	}
	if w.Near != "" {
		v.Set("near", w.Near)
	}
	if len(v) == 0 {
		return url.PathEscape(w.Service)
	}
	return url.PathEscape(w.Service) + "?" + v.Encode()
}

func (w Watch) String() string { return w.Key() }

// Instance is one instance of a service as l4lb uses it.
type Instance struct {
	ID        string `json:"id"`      // "address:port": the host id in its pool
	Address   string `json:"address"` // Service.Address, or the node's; an IP or a name
	Port      int    `json:"port"`
	Weight    int    `json:"weight"` // Weights.Passing, or Weights.Warning while a check warns; 0..1000
	Status    string `json:"status"` // passing | warning | critical
	Node      string `json:"node,omitempty"`
	ServiceID string `json:"service_id,omitempty"`
}

// HostPort is the instance's address as "host:port" ("[v6]:port").
func (i Instance) HostPort() string { return net.JoinHostPort(i.Address, strconv.Itoa(i.Port)) }

// Source says where a watch's current data comes from.
type Source string

// Sources.
const (
	SourceWaiting Source = "waiting"         // no data yet: no answer and no usable copy on disk
	SourceConsul  Source = "consul"          // a live answer
	SourceLKG     Source = "last_known_good" // the copy on disk; Consul has not answered since start
)

// Sink receives what the watchers learn. Calls come from watcher
// goroutines, one at a time per watch; a sink must not call back into
// Discovery's Run or SetWatches while Run waits for it.
type Sink interface {
	// Update gives a watch's new set of instances, sorted by ID.
	Update(w Watch, instances []Instance, src Source)
	// Error reports the first failure after a good answer (or at start).
	Error(w Watch, err error)
	// Recovered reports the first good answer after Error.
	Recovered(w Watch)
}

// Status is one watch's state, for operators.
type Status struct {
	Watch      Watch
	Source     Source
	Index      uint64    // of the data in use
	Updated    time.Time // when the data in use was answered; zero = none
	Instances  int
	Failures   int       // consecutive failed requests
	LastError  string    // of the last failed request, while failing
	EmptySince time.Time // an empty answer is held back since then (not confirmed yet)
}

// Discovery runs one watcher per Watch. The zero value is not usable: call New.
type Discovery struct {
	cfg       Config
	log       zerolog.Logger
	sink      Sink
	client    *api.Client
	transport *http.Transport

	kick chan struct{}

	mu      sync.Mutex
	want    []Watch            // what SetWatches asked for
	status  map[string]*Status // by key, running watches only
	pending map[string]bool    // first outcome not yet known, for Ready
	started bool               // Run has taken the first set
	ready   chan struct{}
}

// New builds the Consul client (one for every watcher) and reads the token
// file. It starts nothing.
func New(cfg Config, sink Sink, log zerolog.Logger) (*Discovery, error) {
	cfg.defaults()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// One blocking query per watch holds a connection for up to wait:
	// keep them for reuse instead of redialling after every answer.
	tr.MaxIdleConnsPerHost = 64
	tlsConf := api.TLSConfig{
		Address:            cfg.Address,
		CAFile:             cfg.CAFile,
		CertFile:           cfg.CertFile,
		KeyFile:            cfg.KeyFile,
		InsecureSkipVerify: cfg.SkipVerify,
	}
	if host, _, err := net.SplitHostPort(cfg.Address); err == nil {
		tlsConf.Address = host
	}
	hc, err := api.NewHttpClient(tr, tlsConf)
	if err != nil {
		return nil, fmt.Errorf("%w: consul tls: %w", ErrDiscovery, err)
	}
	// The api client sets no timeout: a stuck agent would hold a request
	// forever. Each request also gets a context deadline (the tighter one);
	// this is the backstop above the longest of them.
	hc.Timeout = cfg.RequestTimeout(cfg.Wait) + max(cfg.StartupTimeout, time.Second)
	client, err := api.NewClient(&api.Config{
		Address:    cfg.Address,
		Scheme:     cfg.Scheme,
		Datacenter: cfg.Datacenter,
		Token:      cfg.Token,
		TokenFile:  cfg.TokenFile,
		HttpClient: hc,
		Transport:  tr,
		TLSConfig:  tlsConf,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: consul client: %w", ErrDiscovery, err)
	}
	return &Discovery{
		cfg: cfg, log: log.With().Str("component", "discovery").Logger(), sink: sink,
		client: client, transport: tr, kick: make(chan struct{}, 1),
		status: map[string]*Status{}, ready: make(chan struct{}),
	}, nil
}

// SetWatches sets what to follow. Watchers of watches that stay keep
// running (and their index); new ones start and gone ones stop. It may be
// called before Run, and from a Sink.
func (d *Discovery) SetWatches(ws []Watch) {
	d.mu.Lock()
	d.want = dedupe(ws)
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func dedupe(ws []Watch) []Watch {
	seen := map[string]bool{}
	var out []Watch
	for _, w := range ws {
		w.Tags = slices.Compact(slices.Sorted(slices.Values(w.Tags)))
		if k := w.Key(); !seen[k] {
			seen[k] = true
			out = append(out, w)
		}
	}
	return out
}

// Ready is closed once every watch set before Run started has had its first
// outcome: an answer, the copy on disk, or neither within StartupTimeout.
func (d *Discovery) Ready() <-chan struct{} { return d.ready }

// Status returns the state of the watch with key, and whether it runs.
func (d *Discovery) Status(key string) (Status, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.status[key]
	if !ok {
		return Status{}, false
	}
	return *st, true
}

// Run runs the watchers until ctx is done, and returns once all of them
// have ended.
func (d *Discovery) Run(ctx context.Context) error {
	running := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer func() {
		for _, cancel := range running {
			cancel()
		}
		wg.Wait()
		d.transport.CloseIdleConnections()
	}()
	for {
		d.mu.Lock()
		want := map[string]Watch{}
		for _, w := range d.want {
			want[w.Key()] = w
		}
		for key, cancel := range running {
			if _, ok := want[key]; !ok {
				cancel()
				delete(running, key)
				delete(d.status, key)
				d.doneLocked(key)
				d.log.Info().Str("watch", key).Msg("consul watch stopped")
			}
		}
		for key, w := range want {
			if running[key] != nil {
				continue
			}
			wctx, cancel := context.WithCancel(ctx)
			running[key] = cancel
			d.status[key] = &Status{Watch: w, Source: SourceWaiting}
			if !d.started {
				if d.pending == nil {
					d.pending = map[string]bool{}
				}
				d.pending[key] = true
			}
			x := &watcher{d: d, w: w, key: key, log: d.log.With().Str("watch", key).Logger()}
			wg.Add(1)
			go runWatcher(wctx, x, &wg)
		}
		if !d.started {
			d.started = true
			if len(d.pending) == 0 {
				close(d.ready)
			}
		}
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-d.kick:
		}
	}
}

func runWatcher(ctx context.Context, x *watcher, wg *sync.WaitGroup) {
	defer wg.Done()
	x.run(ctx)
}

// done marks a watch's first outcome known.
func (d *Discovery) done(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.doneLocked(key)
}

func (d *Discovery) doneLocked(key string) {
	if !d.pending[key] {
		return
	}
	delete(d.pending, key)
	if len(d.pending) == 0 {
		close(d.ready)
	}
}

// setStatus changes a running watch's status under the lock.
func (d *Discovery) setStatus(key string, f func(*Status)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st := d.status[key]; st != nil {
		f(st)
	}
}
