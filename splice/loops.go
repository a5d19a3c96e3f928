package splice

import "runtime"

// DefaultLoops is the engine's loop count unless SetLoops says otherwise:
// one loop per two of the CPUs Go started on (GOMAXPROCS when the process
// started, which follows the CPU affinity and the cgroup's limit), at
// least one. It does not follow later GOMAXPROCS changes: l4lb lowers
// GOMAXPROCS to the loop count once the count is known, and the default
// must read the same afterwards (a reload compares it).
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
func DefaultLoops() int { return loopsFor(startProcs) }

// startProcs is GOMAXPROCS as the process started.
var startProcs = runtime.GOMAXPROCS(0)

// loopsFor is the default loop count for procs CPUs.
func loopsFor(procs int) int { return max(procs/2, 1) }

// ResolveLoops is the loop count SetLoops(n) asks for: n, or DefaultLoops
// for 0.
func ResolveLoops(n int) int {
	if n > 0 {
		return n
	}
	return DefaultLoops()
}
