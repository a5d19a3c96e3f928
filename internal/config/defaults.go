package config

import "time"

// Defaults that are not simply a zero value.
const (
	defaultConnectTimeout = 5 * time.Second
	defaultIdleTCP        = time.Hour
	defaultIdleUDP        = 30 * time.Second
	defaultFinTimeout     = 30 * time.Second
	defaultDrainTimeout   = 30 * time.Second
	defaultTries          = 3
	defaultMaxFails       = 1 // as nginx
	defaultFailTimeout    = 10 * time.Second
	defaultInterval       = 2 * time.Second
	defaultHealthTimeout  = time.Second
	defaultRise           = 2
	defaultFall           = 3
	defaultWeight         = 1

	DefaultConsulAddress  = "127.0.0.1:8500"
	DefaultKVPrefix       = "l4lb/default/"
	defaultConsulWait     = 30 * time.Second
	defaultBackoffMin     = time.Second
	defaultBackoffMax     = time.Minute
	defaultStartupTimeout = 3 * time.Second
)

// setDefaults fills what the file left out. has reports whether a key path
// was written in the file, so that an explicit 0 (max_fails = 0, slow_start =
// "0s") is kept and not mistaken for "absent"; explicit zeros that make no
// sense are then rejected by validate.
func (c *Config) setDefaults(has func(key string) bool) {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = Console
	}
	if c.Control.Mode == "" {
		c.Control.Mode = "0600"
	}
	if c.Control.Store == "" {
		c.Control.Store = "local"
	}
	if c.Control.KVPrefix == "" {
		c.Control.KVPrefix = DefaultKVPrefix
	}
	if c.Consul.Address == "" {
		c.Consul.Address = DefaultConsulAddress
	}
	if c.Consul.Scheme == "" {
		c.Consul.Scheme = "http"
	}
	dur(has, "consul.wait", &c.Consul.Wait, defaultConsulWait)
	dur(has, "consul.backoff_min", &c.Consul.BackoffMin, defaultBackoffMin)
	dur(has, "consul.backoff_max", &c.Consul.BackoffMax, defaultBackoffMax)
	dur(has, "consul.startup_timeout", &c.Consul.StartupTimeout, defaultStartupTimeout)
	for i, l := range c.Listeners {
		if l == nil {
			l = &Listener{}
			c.Listeners[i] = l
		}
		k := index("listener", i)
		if l.Protocol == "" {
			l.Protocol = TCP
		}
		dur(has, k+".connect_timeout", &l.ConnectTimeout, defaultConnectTimeout)
		idle := defaultIdleTCP
		if l.Protocol == UDP {
			idle = defaultIdleUDP
		}
		dur(has, k+".idle_timeout", &l.IdleTimeout, idle)
		dur(has, k+".fin_timeout", &l.FinTimeout, defaultFinTimeout)
		dur(has, k+".drain_timeout", &l.DrainTimeout, defaultDrainTimeout)
		dur(has, k+".proxy_protocol_timeout", &l.ProxyProtocolTimeout, 5*time.Second)
	}
	for name, u := range c.Upstreams {
		if u == nil {
			u = &Upstream{}
			c.Upstreams[name] = u
		}
		u.Name = name
		k := join("upstream", name)
		if u.Method == "" {
			u.Method = RoundRobin
		}
		if u.HashKey == "" {
			u.HashKey = SourceIP
		}
		num(has, k+".tries", &u.Tries, defaultTries)
		num(has, k+".max_fails", &u.MaxFails, defaultMaxFails)
		dur(has, k+".fail_timeout", &u.FailTimeout, defaultFailTimeout)
		if u.AllDown == "" {
			u.AllDown = Reject
		}
		u.Health.setDefaults(has, k+".health")
		for i, p := range u.Pools {
			if p == nil {
				p = &Pool{}
				u.Pools[i] = p
			}
			pk := index(k+".pool", i)
			p.Health.setDefaults(has, pk+".health")
			if p.Consul != nil && !has(pk+".consul.passing_only") {
				p.Consul.PassingOnly = true
			}
			for j, h := range p.Hosts {
				if h == nil {
					h = &Host{}
					p.Hosts[j] = h
				}
				if h.Weight == nil {
					w := defaultWeight
					h.Weight = &w
				}
				if h.ID == "" {
					h.ID = h.Address
				}
			}
		}
	}
}

func (h *Health) setDefaults(has func(string) bool, k string) {
	if h == nil {
		return
	}
	if h.Type == "" {
		h.Type = HealthTCP // what a bare [health] table most likely means
	}
	dur(has, k+".interval", &h.Interval, defaultInterval)
	dur(has, k+".timeout", &h.Timeout, defaultHealthTimeout)
	num(has, k+".rise", &h.Rise, defaultRise)
	num(has, k+".fall", &h.Fall, defaultFall)
	dur(has, k+".jitter", &h.Jitter, time.Duration(h.Interval)/10)
	if h.Type == HealthHTTP {
		if h.Path == "" {
			h.Path = "/"
		}
		if h.Method == "" {
			h.Method = "GET"
		}
		if !has(k+".fail_status") && len(h.FailStatus) == 0 {
			h.FailStatus = []string{"5xx"}
		}
	}
}

func dur(has func(string) bool, key string, d *Duration, def time.Duration) {
	if !has(key) {
		*d = Duration(def)
	}
}

func num(has func(string) bool, key string, n *int, def int) {
	if !has(key) {
		*n = def
	}
}
