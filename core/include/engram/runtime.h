// Process-wide libtorch settings that every front end (CLI, GUI, tests, benchmarks) applies once.
#pragma once

namespace engram {

// Intra-op threads: Debian's libtorch starts with one, which leaves the element-wise work of a
// forward pass (norms, activations, softmax) on a single core while OpenBLAS uses all of them.
// Uses $OMP_NUM_THREADS when set, else every core. Returns the thread count in force.
int init_runtime();

}  // namespace engram
