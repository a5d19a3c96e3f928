package discovery

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/l4lb/l4lb/internal/atomicfile"
)

// The last-known-good copy of a watch is one file under StateDir:
//
//	{"version":1,"sha256":"<hex of the compact body>","body":{"watch":KEY,"index":N,"time":T,"instances":[...]}}
//
// written atomically (temporary file, fsync, rename, fsync of the
// directory) so that a crash leaves the old copy or the new one. The
// checksum catches a file damaged on disk or edited by hand: such a file is
// reported and ignored, never half used.

const lkgVersion = 1

type lkgEnvelope struct {
	Version int             `json:"version"`
	SHA256  string          `json:"sha256"`
	Body    json.RawMessage `json:"body"`
}

// LKG is the body of a last-known-good file.
type LKG struct {
	Watch     string     `json:"watch"`
	Index     uint64     `json:"index"`
	Time      time.Time  `json:"time"`
	Instances []Instance `json:"instances"`
}

// LKGPath is the file of the watch with key under dir:
// consul-<first 16 hex digits of sha256(key)>.json.
func LKGPath(dir, key string) string {
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(dir, "consul-"+hex.EncodeToString(sum[:8])+".json")
}

// EncodeLKG renders a file's content.
func EncodeLKG(l LKG) ([]byte, error) {
	body, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	return json.Marshal(lkgEnvelope{Version: lkgVersion, SHA256: hex.EncodeToString(sum[:]), Body: body})
}

// DecodeLKG checks and parses a file's content.
func DecodeLKG(b []byte) (LKG, error) {
	var env lkgEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return LKG{}, fmt.Errorf("not a last-known-good file: %w", err)
	}
	if env.Version != lkgVersion {
		return LKG{}, fmt.Errorf("unknown version %d", env.Version)
	}
	// Hash the compact form, so that re-indenting the file is not damage.
	var body bytes.Buffer
	if err := json.Compact(&body, env.Body); err != nil {
		return LKG{}, fmt.Errorf("body: %w", err)
	}
	sum := sha256.Sum256(body.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return LKG{}, errors.New("checksum mismatch: the file is damaged")
	}
	var l LKG
	if err := json.Unmarshal(body.Bytes(), &l); err != nil {
		return LKG{}, fmt.Errorf("body: %w", err)
	}
	for i, in := range l.Instances {
		if in.ID == "" || in.Address == "" || in.Port <= 0 || in.Port > 65535 || in.Weight < 0 || in.Weight > 1000 {
			return LKG{}, fmt.Errorf("instance %d: bad address, port or weight", i)
		}
	}
	if l.Instances == nil {
		l.Instances = []Instance{}
	}
	return l, nil
}

// readLKG returns the instances of the copy on disk, or nil; report says
// whether a bad file is logged (once, when it would have been used).
func (x *watcher) readLKG(report bool) []Instance {
	if f := x.readLKGFile(report); f != nil {
		return f.Instances
	}
	return nil
}

func (x *watcher) readLKGFile(report bool) *LKG {
	if x.d.cfg.StateDir == "" {
		return nil
	}
	path := LKGPath(x.d.cfg.StateDir, x.key)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		var l LKG
		if l, err = DecodeLKG(b); err == nil {
			if l.Watch == x.key {
				return &l
			}
			err = fmt.Errorf("written for watch %q", l.Watch)
		}
	}
	if report {
		x.log.Error().Err(err).Str("file", path).Msg("last-known-good copy ignored")
	}
	return nil
}

func (x *watcher) writeLKG(in []Instance, idx uint64, t time.Time) error {
	if x.d.cfg.StateDir == "" {
		return nil
	}
	b, err := EncodeLKG(LKG{Watch: x.key, Index: idx, Time: t.UTC(), Instances: in})
	if err != nil {
		return err
	}
	return writeAtomic(LKGPath(x.d.cfg.StateDir, x.key), b)
}

// writeAtomic replaces path with b: a temporary file, fsync, rename over
// the old one, fsync of the directory.
func writeAtomic(path string, b []byte) error {
	return atomicfile.Write(path, append(b, '\n'))
}
