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
# Steps timed before the first estimate. A process's first step pays for allocations and kernel
# selection, so the estimate uses the steps after it.
ESTIMATE_AFTER_STEPS = 3


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


def epochs_per_encoder() -> int:
    from pretrain.recipes import recipe_config

    return recipe_config(EMBEDDED_RECIPES[0], dict(EMBEDDED_OVERRIDES)).optim.epochs


def describe_training(count: int) -> str:
    """What training `count` embedded encoders involves; its time is measured when it starts, not guessed."""
    return (f"{count} encoder(s), {epochs_per_encoder()} epoch(s) each: {parallel_trainings(count)} at a time with "
            f"{EMBEDDED_THREADS} thread each, the time estimated from the first steps on this machine")


_progress_queue = None  # in each training worker: where it reports its steps


def _set_progress_queue(queue) -> None:
    global _progress_queue
    _progress_queue = queue


def _train_one(recipe: str, seed: int, overrides: dict, out_dir: str, threads: int) -> str:
    """One embedded encoder, in a worker process with a fixed thread count; reports every step."""
    import torch

    torch.set_num_threads(threads)
    from pretrain.train import train_recipe

    def report(epoch: int, step: int, steps: int) -> None:
        if _progress_queue is not None:
            _progress_queue.put((recipe, seed, epoch, step, steps, time.monotonic()))

    path = train_recipe(recipe, dict(overrides) | {"seed": int(seed)}, out_dir, show_progress=False,
                        allow_distributed=False, on_step=report)
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


class TrainingProgress:
    """One bar over the steps of every embedded training (live on a terminal, a line every 30 s in a log)
    with each encoder's epoch and step, and a first estimate from steps timed on this machine."""

    def __init__(self, runs: list[tuple[str, int]], stream: TextIO, workers: int):
        from ringbench_common.progress import progress_bar

        self.stream, self.workers, self.epochs = stream, workers, epochs_per_encoder()
        self.steps = 0  # per encoder: known from the first step reported
        self.position = {run: "starting" for run in runs}
        self.done = {run: 0 for run in runs}
        self.timing: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
        self.estimated = False
        self.started = time.monotonic()
        self.bar = progress_bar(total=None, desc="embedded encoders", unit="step", file=stream)

    @staticmethod
    def label(run: tuple[str, int]) -> str:
        recipe, seed = run
        return f"{recipe.rsplit('_', 1)[-1]} (seed {seed})"

    def report(self, recipe: str, seed: int, epoch: int, step: int, steps: int, at: float) -> None:
        run = (recipe, seed)
        if not self.steps:
            self.steps = self.epochs * steps
            self.bar.total = self.steps * len(self.done)
        done = epoch * steps + step
        self.position[run] = f"epoch {epoch + 1}/{self.epochs} step {step}/{steps}"
        self.bar.update(done - self.done[run])
        self.done[run] = done
        if len(self.timing[run]) <= ESTIMATE_AFTER_STEPS:
            self.timing[run].append(at)
        timed = [run for run, t in self.timing.items() if len(t) > ESTIMATE_AFTER_STEPS]
        if not self.estimated and len(timed) >= min(self.workers, len(self.timing)):
            self.say_estimate(timed)
        self.bar.set_postfix_str("; ".join(f"{self.label(r)} {p}" for r, p in self.position.items()))

    def say_estimate(self, timed: list[tuple[str, int]]) -> None:
        """The steps left over all trainings, `workers` at a time, at the slowest timed pace (the steps after
        each training's first, timed here)."""
        self.estimated = True
        per_step = max((self.timing[run][-1] - self.timing[run][0]) / ESTIMATE_AFTER_STEPS for run in timed)
        left = sum(self.steps - done for done in self.done.values())
        total = time.monotonic() - self.started + per_step * left / self.workers
        self.bar.write(f"embedded encoders: about {total / 60:.1f} min in all on this machine "
                       f"({per_step:.2f} s per step over steps 2-{ESTIMATE_AFTER_STEPS + 1}, {self.workers} "
                       f"side by side, {self.steps} steps each)", file=self.stream)

    def close(self) -> None:
        self.bar.close()


def _train_missing(missing: list[tuple[str, int]], stream: TextIO) -> None:
    import multiprocessing
    import queue as queues
    from concurrent.futures import ProcessPoolExecutor, wait

    started = time.perf_counter()
    overrides = dict(EMBEDDED_OVERRIDES)
    # spawn: a fresh interpreter per worker, so no thread pool or lock of this process is inherited
    context = multiprocessing.get_context("spawn")
    steps = context.Queue()
    workers = parallel_trainings(len(missing))
    progress = TrainingProgress(missing, stream, workers)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_set_progress_queue, initargs=(steps,)) as pool:
            futures = {pool.submit(_train_one, recipe, seed, overrides, str(_run_dir(recipe, seed)),
                                   EMBEDDED_THREADS): (recipe, seed) for recipe, seed in missing}
            pending = set(futures)
            while pending:
                try:
                    while True:
                        progress.report(*steps.get(timeout=0.5))
                except queues.Empty:
                    pass
                finished, pending = wait(pending, timeout=0)
                for future in finished:
                    recipe, seed = futures[future]
                    future.result()  # a failed training raises here, naming its error
                    progress.bar.write(f"embedded encoders: trained {recipe} (pretraining seed {seed}) "
                                       f"after {time.perf_counter() - started:.0f} s", file=stream)
            while not steps.empty():  # the last steps reported just before their training ended
                progress.report(*steps.get())
    finally:
        progress.close()
