//go:build !linux

package uring

import "errors"

// Ring is not available off Linux.
type Ring struct{}

// Available says io_uring is Linux's.
func Available() error { return errors.New("io_uring is Linux-only") }

// New fails off Linux.
func New(uint32, int) (*Ring, error) { return nil, Available() }

func (r *Ring) Close()                        {}
func (r *Ring) Queued() uint32                { return 0 }
func (r *Ring) Send(int, []byte, uint64) bool { return false }
func (r *Ring) Submit()                       {}
func (r *Ring) Wait(uint32)                   {}
func (r *Ring) Reap(func(uint64, int32)) bool { return false }
