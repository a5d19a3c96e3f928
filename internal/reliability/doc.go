// Package reliability holds l4lb's reliability suite: faults, limits, slow
// peers, randomized sequences and soak, each asserting what a user relies on
// and logging the figures docs/RELIABILITY.md reports. It has no code of its
// own, only tests.
//
//	go test ./internal/reliability/                      # the short versions (CI)
//	make reliability                                     # longer: L4LB_LONG=1 (soak 30 min: L4LB_LONG=30m)
package reliability
