// Package atomicfile writes a file so that a crash leaves either the old
// content or the new, never a mix: a temporary file in the same directory,
// fsync, rename over the old one, fsync of the directory.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data atomically, creating its directory (0750)
// if needed. The file gets mode 0600 (os.CreateTemp's).
func Write(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, a no-op
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
