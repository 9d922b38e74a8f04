"""The embedded default encoders: an NCE and a Ring encoder pretrained on the bundled digits.

Trained once on first use and cached, so every suite works on a fresh machine with nothing
downloaded. The cache folder is $RINGBENCH_CACHE (default ~/.cache/ringbench).

The pair is recipes `digits_default_nce` / `digits_default_ring` (same method, same settings, only
the negative sampler differs), once per pretraining seed (default: seed 0 only). Training happens
under an exclusive file lock, so concurrent callers (parallel jobs, test workers) wait for one
training instead of repeating it; files are written atomically, so a reader never sees half an
encoder.

Every encoder trains in its own process with one intra-op thread, the missing ones side by side
(as many at once as there are CPU cores). On a 2-core CPU two single-thread trainings finish the
pair in about half the wall time of one two-thread training after the other (small 32 px
convolutions gain little from a second thread), and a fixed thread count keeps the encoders the
same on machines with more cores (floating-point sums follow the thread split).
"""

from __future__ import annotations

import fcntl
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

# Bump when the default recipes or how they are trained change, so stale cached encoders are not reused.
# v3: one intra-op thread per encoder, trained side by side; per-pretraining-seed folders.
EMBEDDED_VERSION = 3
EMBEDDED_RECIPES = ("digits_default_nce", "digits_default_ring")
DEFAULT_PRETRAIN_SEEDS = (0,)
# Extra config overrides for every encoder (empty in normal use; tests shrink the runs with it).
EMBEDDED_OVERRIDES: dict = {}
EMBEDDED_THREADS = 1
# CPU time of one encoder trained with one thread (20 epochs, 440 SGD steps, the kNN monitor once), measured
# on a 2-core AMD EPYC (Zen 4) VM: 214 s (NCE and Ring alike), i.e. its wall time on an idle core. Used only
# for the "about N min" estimate printed before training.
EMBEDDED_SECONDS_PER_ENCODER = 215.0


def cache_root() -> Path:
    return Path(os.environ.get("RINGBENCH_CACHE", Path.home() / ".cache" / "ringbench"))


def encoders_dir() -> Path:
    return cache_root() / "encoders"


def parse_pretrain_seeds(seeds: Sequence[int] | None) -> tuple[int, ...]:
    """The distinct pretraining seeds in order; the default (seed 0) when none are given."""
    if not seeds:
        return DEFAULT_PRETRAIN_SEEDS
    unique: dict[int, None] = {}
    for seed in seeds:
        if int(seed) < 0:
            raise ValueError(f"pretraining seed {seed}: expected an integer >= 0")
        unique.setdefault(int(seed), None)
    return tuple(unique)


def _run_dir(recipe: str, seed: int = 0) -> Path:
    return encoders_dir() / f"{recipe}-s{int(seed)}-v{EMBEDDED_VERSION}"


def embedded_runs(pretrain_seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """(recipe, pretraining seed) of every embedded encoder: per seed, NCE then Ring."""
    return [(recipe, seed) for seed in parse_pretrain_seeds(pretrain_seeds) for recipe in EMBEDDED_RECIPES]


def embedded_paths(pretrain_seeds: Sequence[int] | None = None) -> list[Path]:
    """Where the embedded encoders are (or will be) cached; nothing is trained."""
    from pretrain.train import ENCODER_FILE

    return [_run_dir(recipe, seed) / ENCODER_FILE for recipe, seed in embedded_runs(pretrain_seeds)]


def cached_encoders(pretrain_seeds: Sequence[int] | None = None) -> list[Path]:
    """The embedded encoder files already in the cache, per seed [NCE, Ring] order; trains nothing."""
    return [path for path in embedded_paths(pretrain_seeds) if path.is_file()]


def missing_runs(pretrain_seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
    runs = embedded_runs(pretrain_seeds)
    return [run for run, path in zip(runs, embedded_paths(pretrain_seeds)) if not path.is_file()]


def parallel_trainings(count: int) -> int:
    return max(1, min(count, (os.cpu_count() or 1) // EMBEDDED_THREADS))


def estimated_seconds(count: int) -> float:
    """Rough wall time to train `count` embedded encoders here (from the measured single-encoder figure)."""
    if count <= 0:
        return 0.0
    return math.ceil(count / parallel_trainings(count)) * EMBEDDED_SECONDS_PER_ENCODER


def describe_training(count: int) -> str:
    minutes = max(1, round(estimated_seconds(count) / 60))
    return (f"about {minutes} min: {count} encoder(s), {parallel_trainings(count)} at a time with "
            f"{EMBEDDED_THREADS} thread each, {EMBEDDED_SECONDS_PER_ENCODER / 60:.1f} min of CPU per encoder "
            "as measured on a 2-core CPU; longer on a busy machine")


def _train_one(recipe: str, seed: int, overrides: dict, out_dir: str, threads: int) -> str:
    """One embedded encoder, in a worker process with a fixed thread count."""
    import torch

    torch.set_num_threads(threads)
    from pretrain.train import train_recipe

    path = train_recipe(recipe, dict(overrides) | {"seed": int(seed)}, out_dir, show_progress=False,
                        allow_distributed=False)
    return str(path)


def default_encoders(pretrain_seeds: Sequence[int] | None = None, stream: TextIO | None = None) -> list[Path]:
    """Paths of the embedded encoders, per pretraining seed [NCE, Ring], training the missing ones first.

    `stream` (default stderr) receives one line as each encoder finishes."""
    paths = embedded_paths(pretrain_seeds)
    if all(path.is_file() for path in paths):
        return paths
    stream = stream or sys.stderr
    folder = encoders_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        missing = missing_runs(pretrain_seeds)  # another caller may have trained some while we waited
        if missing:
            _train_missing(missing, stream)
    return paths


def _train_missing(missing: list[tuple[str, int]], stream: TextIO) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    started = time.perf_counter()
    overrides = dict(EMBEDDED_OVERRIDES)
    workers = parallel_trainings(len(missing))
    # spawn: a fresh interpreter per worker, so no thread pool or lock of this process is inherited
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, recipe, seed, overrides, str(_run_dir(recipe, seed)), EMBEDDED_THREADS):
                   (recipe, seed) for recipe, seed in missing}
        for future in as_completed(futures):
            recipe, seed = futures[future]
            future.result()  # a failed training raises here, naming its error
            print(f"embedded encoders: trained {recipe} (pretraining seed {seed}) "
                  f"after {time.perf_counter() - started:.0f} s", file=stream, flush=True)
