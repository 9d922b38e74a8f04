"""What every layer may import (pretrain, transfer, bench, slurm): key=value parsing (`overrides`),
atomic file writes that name a full or read-only disk (`atomic_files`) and progress bars that suit
a terminal or a log (`progress`). It imports nothing from the layers above it."""
