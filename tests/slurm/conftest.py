"""The runner tests' fixtures (real encoder checkpoints, subprocess environment) for the SLURM tests."""

from tests.bench.conftest import bench_env, encoder_pair  # noqa: F401
