"""Performance scripts (`python -m benchmarks.gpu`, ...): outside the wheel, never imported by the packages."""
