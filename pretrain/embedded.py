"""The embedded default encoders: an NCE and a Ring encoder pretrained on the bundled digits.

Trained once on first use and cached, so every suite works on a fresh machine with nothing
downloaded. The cache folder is $RINGBENCH_CACHE (default ~/.cache/ringbench).

The pair is recipes `digits_default_nce` / `digits_default_ring` (same method, same settings, only
the negative sampler differs). Training happens under an exclusive file lock, so concurrent callers
(parallel jobs, test workers) wait for one training instead of repeating it; files are written
atomically, so a reader never sees half an encoder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# Bump when the default recipes change, so stale cached encoders are not reused.
EMBEDDED_VERSION = 2
EMBEDDED_RECIPES = ("digits_default_nce", "digits_default_ring")
# Extra config overrides for both encoders (empty in normal use; tests shrink the runs with it).
EMBEDDED_OVERRIDES: dict = {}


def cache_root() -> Path:
    return Path(os.environ.get("RINGBENCH_CACHE", Path.home() / ".cache" / "ringbench"))


def encoders_dir() -> Path:
    return cache_root() / "encoders"


def _run_dir(recipe: str) -> Path:
    return encoders_dir() / f"{recipe}-v{EMBEDDED_VERSION}"


def cached_encoders() -> list[Path]:
    """The embedded encoder files already in the cache, [NCE, Ring] order; trains nothing."""
    from pretrain.train import ENCODER_FILE

    return [path for path in (_run_dir(recipe) / ENCODER_FILE for recipe in EMBEDDED_RECIPES) if path.is_file()]


def default_encoders() -> list[Path]:
    """Paths of the embedded [NCE, Ring] encoder files, training them first if they are not cached."""
    from pretrain.train import ENCODER_FILE

    paths = [_run_dir(recipe) / ENCODER_FILE for recipe in EMBEDDED_RECIPES]
    if all(path.is_file() for path in paths):
        return paths
    folder = encoders_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        from pretrain.train import train_recipe

        for recipe, path in zip(EMBEDDED_RECIPES, paths):
            if not path.is_file():
                train_recipe(recipe, dict(EMBEDDED_OVERRIDES), _run_dir(recipe), allow_distributed=False)
    return paths
