"""The shipped benchmarks: each measures tagwatch beside the naive way in one run."""
