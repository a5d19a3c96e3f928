//go:build !linux

package splice

import "fmt"

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

// The engine is Linux-only; elsewhere every session runs on the goroutine
// copier.
type (
	loop     struct{}
	engState struct{}
)

// StartEngine does nothing off Linux: there is no engine.
func StartEngine() error { return nil }

// SetLoops does nothing off Linux beyond checking n: there is no engine.
func SetLoops(n int) error {
	if n < 0 {
		return fmt.Errorf("splice: %d loops", n)
	}
	return nil
}

func (s *Session) startEngine(func(Result)) bool { return false }
func (s *Session) abortEngine(*loop, string)     {}
