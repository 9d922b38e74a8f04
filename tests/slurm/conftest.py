"""The runner tests' fixtures (real encoder checkpoints, subprocess environment) for the SLURM tests."""

from ringbench_testing.bench import bench_env, encoder_pair  # noqa: F401
