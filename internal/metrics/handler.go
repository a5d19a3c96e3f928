package metrics

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"strconv"
	"strings"
	"sync"

	vm "github.com/VictoriaMetrics/metrics"
)

// maxScrapes is how many scrapes may run at once; more are answered 503.
const maxScrapes = 4

// NewHandler returns the GET /metrics handler for src: l4lb's own metrics
// (docs/METRICS.md), then the Go runtime's (go_*) and the process's
// (process_*, open fds against the limit among them). The answer is
// gzipped when the scraper accepts it, as Prometheus does.
func NewHandler(src Source, version string) http.Handler {
	vm.ExposeMetadata(true) // HELP and TYPE lines for go_* and process_* too
	return &handler{c: NewCollector(src, version), sem: make(chan struct{}, maxScrapes)}
}

type handler struct {
	c   *Collector
	sem chan struct{}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case h.sem <- struct{}{}:
		defer func() { <-h.sem }()
	default:
		http.Error(w, "too many scrapes in progress", http.StatusServiceUnavailable)
		return
	}
	e := newExposition()
	h.c.collect(e)
	var body bytes.Buffer
	e.writeTo(&body, all)         // a bytes.Buffer does not fail
	vm.WriteProcessMetrics(&body) // process_open_fds and _max_fds are ours (collect)

	w.Header().Set("Content-Type", contentType)
	w.Header().Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r) {
		w.Write(body.Bytes())
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(w)
	zw.Write(body.Bytes())
	zw.Close()
	gzipWriters.Put(zw)
}

// gzipWriters keeps gzip writers between scrapes. BestSpeed: its state is
// a few hundred KB smaller than the default level's, and metrics text
// compresses about as well (a scrape of one listener: 15 KB to 3 KB).
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // a valid level: no error
	return zw
}}

// acceptsGzip reports whether the request's Accept-Encoding lists gzip
// with a q-value above 0 (RFC 9110, section 12.5.3).
func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(part, ";")
			if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
				continue
			}
			for param := range strings.SplitSeq(params, ";") {
				k, val, _ := strings.Cut(param, "=")
				if strings.EqualFold(strings.TrimSpace(k), "q") {
					q, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
					return err == nil && q > 0
				}
			}
			return true
		}
	}
	return false
}
