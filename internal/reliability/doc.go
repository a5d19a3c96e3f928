// Package reliability holds l4lb's reliability suite: faults, limits, slow
// peers, randomized sequences and soak, each asserting what a user relies on
// and logging the figures docs/RELIABILITY.md reports. It has no code of its
// own, only tests.
//
//	go test ./internal/reliability/    # the short versions (CI)
//	make reliability                   # L4LB_LONG=1 L4LB_SOAK=30m L4LB_SCALE=10000
//	make reliability SOAK=5m SCALE=2000
//
// L4LB_LONG=1 selects each test's long variant, whose length is the test's
// own (see each test); L4LB_SOAK is the soak's length and nothing else's;
// L4LB_SCALE=N enables the scale test; L4LB_SEED replays a randomized run.
package reliability
