//go:build !linux

package metrics

import "errors"

var errNoFDs = errors.New("fd count: Linux only")

func openFDs() (int, error)   { return 0, errNoFDs }
func maxFDs() (uint64, error) { return 0, errNoFDs }
