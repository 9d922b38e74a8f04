"""Leaderboard figures drawn in worker processes while the caller goes on.

At 10,000 cells the figures take about as long as reading the cells. A FigureDrawer with workers
starts them first (each one imports pandas and matplotlib while the caller reads the cells) and hands
each figure to the least busy one, so drawing overlaps the tables and the figures overlap each other.

The workers are plain `python -m bench.figure_workers` subprocesses, not a multiprocessing pool: a
spawned pool re-runs the caller's main script, which breaks any script without a __main__ guard, and
fork is unsafe in a process that runs threads. A job is a pickle in a private folder; its path goes
down the worker's stdin and (ok | error, result) comes back on its stdout.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections import deque
from pathlib import Path

import bench

# From this many cells on, figures go to workers; below it, starting them costs more than it saves.
WORKERS_MIN_CELLS = 1000


def _figures():
    from bench import figures

    return {"headline": figures.draw_headline, "paired": figures.plot_paired, "curves": figures.plot_curves}


def workers_for(cells: int) -> int:
    """One worker for a large leaderboard on a machine with two or more cores, else none (see FigureDrawer)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cells >= WORKERS_MIN_CELLS and cores > 1 else 0


class FigureDrawer:
    """`draw(name, *args)` draws figure `name` (headline, paired, curves) in this process, or with
    `workers` > 0 in a worker; `finish()` returns the written paths in call order (None results left
    out) and raises a worker's error; `close()` stops the workers.

    One worker starts at once; another starts only when a figure arrives while every started worker
    still has one to draw. On two cores, starting both at once slowed the reading of the cells (three
    processes importing and parsing) more than the second worker saved."""

    def __init__(self, workers: int = 0):
        self._order: list[tuple[int | None, object]] = []  # (worker, None) or (None, in-process result)
        self._queued: list[deque[str]] = []  # per worker: names of the figures it has not answered yet
        self._workers: list[subprocess.Popen] = []
        self._most = workers
        self._folder = None
        if workers > 0:
            self._folder = Path(tempfile.mkdtemp(prefix="ringbench-figures-"))
            self._start_worker()

    def _start_worker(self) -> None:
        env = dict(os.environ)
        project = str(Path(bench.__file__).resolve().parent.parent)  # importable without an install
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH", "")) if p)
        self._workers.append(subprocess.Popen([sys.executable, "-m", "bench.figure_workers"],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env))
        self._queued.append(deque())

    def draw(self, name: str, *args) -> None:
        if not self._workers:
            self._order.append((None, _figures()[name](*args)))
            return
        if all(self._queued) and len(self._workers) < self._most:
            self._start_worker()
        worker = min(range(len(self._workers)), key=lambda i: len(self._queued[i]))
        handle, job = tempfile.mkstemp(suffix=".pkl", dir=self._folder)
        with os.fdopen(handle, "wb") as out:
            pickle.dump((name, args), out, protocol=pickle.HIGHEST_PROTOCOL)
        self._workers[worker].stdin.write(f"{job}\n".encode())  # a short line: never blocks
        self._workers[worker].stdin.flush()
        self._queued[worker].append(name)
        self._order.append((worker, None))

    def finish(self) -> list[Path]:
        """Wait for every figure asked for so far."""
        order, self._order = self._order, []
        paths = []
        for worker, result in order:
            if worker is not None:
                result = self._answer(worker)
            if result is not None:
                paths.append(Path(result))
        return paths

    def _answer(self, worker: int):
        name = self._queued[worker].popleft()
        process = self._workers[worker]
        try:
            status, value = pickle.load(process.stdout)
        except EOFError:
            raise RuntimeError(f"the figure worker drawing {name!r} exited (code {process.wait()}) "
                               "without an answer; its error is above") from None
        if status != "ok":
            raise RuntimeError(f"drawing the {name!r} figure failed in a worker:\n{value}")
        return value

    def close(self) -> None:
        """Stop the workers (figures not answered yet are dropped) and remove the job folder."""
        for process in self._workers:
            try:
                process.stdin.close()
            except OSError:
                pass
        for process in self._workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        self._workers, self._queued, self._order = [], [], []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def serve() -> int:
    """The worker: one job path per stdin line, one pickled (status, value) per job on stdout."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the answers
    from bench.figures import _pyplot

    _pyplot()  # the import, while the caller is still reading cells
    figures = _figures()
    for line in sys.stdin.buffer:
        job = Path(line.decode().strip())
        try:
            name, args = pickle.loads(job.read_bytes())
            job.unlink()
            answer = ("ok", figures[name](*args))
        except Exception:  # noqa: BLE001 - the caller raises it with the traceback
            answer = ("error", traceback.format_exc())
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
