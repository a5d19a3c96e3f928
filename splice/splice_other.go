//go:build !linux

package splice

// PipePool exists on every OS so callers need no build tags; only Linux
// splices.
type PipePool struct{ MaxIdle int }

var defaultPipes = &PipePool{}

// DefaultPipes returns the pool sessions use when Options.Pipes is nil.
func DefaultPipes() *PipePool { return defaultPipes }

// Open returns the number of pipes open: none off Linux.
func (pp *PipePool) Open() int { return 0 }

// Idle returns the number of idle pipes: none off Linux.
func (pp *PipePool) Idle() int { return 0 }

// Flush does nothing off Linux.
func (pp *PipePool) Flush() {}

// splice is Linux-only; elsewhere the buffered copy does the work.
func (d *direction) splice() (handled bool, err error) { return false, nil }
