package metrics

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"strings"

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
	e.writeTo(&body, all) // a bytes.Buffer does not fail
	vm.WriteProcessMetrics(&body)
	vm.WriteFDMetrics(&body)

	w.Header().Set("Content-Type", contentType)
	if !acceptsGzip(r) {
		w.Write(body.Bytes())
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	w.Header().Add("Vary", "Accept-Encoding")
	zw := gzip.NewWriter(w)
	zw.Write(body.Bytes())
	zw.Close()
}

// acceptsGzip reports whether the request's Accept-Encoding lists gzip
// (with a q-value other than 0).
func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
				continue
			}
			q := strings.ReplaceAll(params, " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}
