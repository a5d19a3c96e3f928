package accesslog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
)

// Mode is the permission a new access log file is created with: the owner
// writes, its group (adm, on Debian) reads.
const Mode = 0o640

// File is an append-only log file that can be reopened after rotation. It is
// safe for concurrent use. A nil *File is valid: Reopen and Close do nothing.
type File struct {
	path   string
	cur    atomic.Pointer[os.File]
	mu     sync.Mutex // serializes Reopen and Close
	closed bool       // by Close; guarded by mu
}

var _ io.Writer = (*File)(nil)

// Open opens (creating it if need be) the file at path for appending.
func Open(path string) (*File, error) {
	fd, err := openFile(path)
	if err != nil {
		return nil, err
	}
	f := &File{path: path}
	f.cur.Store(fd)
	return f, nil
}

func openFile(path string) (*os.File, error) {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, Mode)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return fd, nil
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Write appends p in one write(2). A write that finds the file closed by a
// concurrent Reopen is retried on the new file.
func (f *File) Write(p []byte) (int, error) {
	for {
		fd := f.cur.Load()
		n, err := fd.Write(p)
		if err != nil && errors.Is(err, os.ErrClosed) && f.cur.Load() != fd {
			continue
		}
		return n, err
	}
}

// Reopen opens the path again and writes there from now on: after
// logrotate renamed the file, lines go to a new file of that name. On
// error the old file stays in use.
func (f *File) Reopen() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("access log %s: %w", f.path, os.ErrClosed)
	}
	fd, err := openFile(f.path)
	if err != nil {
		return err
	}
	// Writes in flight on the old file finish before its fd is released
	// (os.File reference-counts it); later ones see ErrClosed and retry.
	return f.cur.Swap(fd).Close()
}

// Close closes the file; later writes fail.
func (f *File) Close() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return f.cur.Load().Close()
}

// Logger returns the logger the listeners write access lines with: JSON
// to w, every level, each line stamped with its time.
func Logger(w io.Writer) zerolog.Logger {
	return zerolog.New(w).With().Timestamp().Logger()
}
