"""Fixtures for the runner tests (defined in ringbench_testing.bench, shared with the SLURM tests)."""

from ringbench_testing.bench import bench_env, encoder_pair, job_env  # noqa: F401
