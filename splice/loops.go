package splice

import "runtime"

// DefaultLoops is the engine's loop count unless SetLoops says otherwise:
// one loop per two of the CPUs Go runs on (GOMAXPROCS, which follows the
// CPU affinity and the cgroup's limit), at least one.
//
// Not one per CPU: each loop wakes on its own, so two loops that both have
// work cost two thread wake-ups where one loop takes both batches in one,
// and on a machine whose clients or backends share the CPUs the second
// loop's parallelism buys nothing. Measured on 2 CPUs (docs/PERFORMANCE.md,
// sixth session): one loop used 0.40–0.43 µs per redis GET at pipeline 16
// against 0.59–0.62 µs with two, and 7.0 against 9.5 µs at pipeline 1, with
// eight bulk streams moving as much. Half the CPUs also leaves Ps for the
// accept loops, the connection workers and the kernel's network work that
// runs on the loops' behalf.
func DefaultLoops() int { return max(runtime.GOMAXPROCS(0)/2, 1) }

// ResolveLoops is the loop count SetLoops(n) asks for: n, or DefaultLoops
// for 0.
func ResolveLoops(n int) int {
	if n > 0 {
		return n
	}
	return DefaultLoops()
}
