"""Speed benchmarks (layer, training step, expert parallelism) and the GPU check."""
