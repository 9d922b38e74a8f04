"""Figures drawn in a worker process: the same bytes as in-process, errors come back, no __main__ guard needed,
and the large-leaderboard figure stays readable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_figures import store_twin_runs

import bench
from bench.figure_workers import FigureDrawer, workers_for
from bench.figures import DPI, HEADLINE_MAX_TASKS, plot_headline
from bench.leaderboard import _joined_per_group, long_table, paired_comparisons, scan_suite, write_all


def test_a_worker_draws_the_same_png_as_this_process(tmp_path):
    store_twin_runs(tmp_path)
    scan = scan_suite(tmp_path, "knn")
    paired = paired_comparisons(long_table(scan), scan.samples)
    here, there = FigureDrawer(0), FigureDrawer(1)
    try:
        here.draw("paired", paired, tmp_path / "here.png", "knn")
        there.draw("paired", paired, tmp_path / "there.png", "knn")
        there.draw("curves", pd.DataFrame(), tmp_path / "none.png", "knn")  # nothing to draw: None, left out
        assert here.finish() == [tmp_path / "here.png"]
        assert there.finish() == [tmp_path / "there.png"]
    finally:
        there.close()
    assert (tmp_path / "here.png").read_bytes() == (tmp_path / "there.png").read_bytes()
    assert not (tmp_path / "none.png").exists()


def test_a_worker_error_is_raised_with_its_traceback(tmp_path):
    drawer = FigureDrawer(1)
    try:
        drawer.draw("paired", "not a table", tmp_path / "x.png", "knn")
        with pytest.raises(RuntimeError, match=r"(?s)drawing the 'paired' figure failed in a worker:.*Traceback"):
            drawer.finish()
    finally:
        drawer.close()
    assert drawer._folder is None  # the job folder is gone


def test_a_script_without_a_main_guard_can_build_a_large_leaderboard(tmp_path):
    """A spawned multiprocessing pool would re-run this script in its workers and fail."""
    store_twin_runs(tmp_path)
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import bench.figure_workers as workers
        from bench.leaderboard import write_all
        workers.WORKERS_MIN_CELLS = 1  # this small store takes the large-leaderboard path
        print(sorted(p.name for p in write_all({str(tmp_path)!r}, ["knn"])))
    """))
    project = str(Path(bench.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "knn_paired.png" in done.stdout and "knn.png" in done.stdout
    assert Image.open(tmp_path / "knn.png").size[0] > 0


def test_workers_only_for_a_large_leaderboard_on_several_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert workers_for(999) == 0 and workers_for(10_000) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert workers_for(10_000) == 0


def test_many_tasks_give_a_rank_heatmap_of_readable_size(tmp_path):
    rng = np.random.default_rng(0)
    tasks = [f"task{t:02d}" for t in range(HEADLINE_MAX_TASKS + 38)]
    models = [f"model {m}" for m in range(20)]
    ranked = pd.DataFrame([{"suite": "perf", "task": t, "metric": "acc", "entry": m, "model": m,
                            "mean": rng.normal(), "ci95": 0.1, "rank": float(r + 1), "avg_rank": 0.0}
                           for t in tasks for r, m in enumerate(rng.permutation(models))])
    ranked["avg_rank"] = ranked.groupby("entry")["rank"].transform("mean")
    path = plot_headline(ranked, tmp_path / "perf.png", "perf")
    width, height = Image.open(path).size
    # a dot per model and task took 1.3 inches per task (66 inches here); the heatmap about a quarter inch
    assert width < 25 * DPI and height < 10 * DPI
    few = ranked[ranked["task"].isin(tasks[:3])]
    assert Image.open(plot_headline(few, tmp_path / "few.png", "perf")).size[0] < width


def test_joined_engines_per_group():
    long = pd.DataFrame({"k": ["a", "a", "a", "b", "b", "c"],
                         "engine": ["torchvision", "detectron2", "torchvision", None, "", "x"]})
    groups = long.groupby(["k"], sort=True).size().index
    assert list(_joined_per_group(long, ["k"], "engine", groups)) == ["detectron2,torchvision", "", "x"]


def test_write_all_with_a_worker_writes_every_file(tmp_path, monkeypatch):
    store_twin_runs(tmp_path)
    monkeypatch.setattr("bench.figure_workers.WORKERS_MIN_CELLS", 1)
    written = {p.name for p in write_all(tmp_path, ["knn"])}
    assert {"knn.csv", "knn.md", "knn.png", "knn_paired.csv", "knn_paired.png", "knn_curves.png", "long.csv"} <= written
    assert all((tmp_path / name).stat().st_size > 0 for name in written)


def test_a_worker_that_dies_before_answering_is_named(tmp_path):
    store_twin_runs(tmp_path)
    scan = scan_suite(tmp_path, "knn")
    drawer = FigureDrawer(1)
    try:
        drawer.draw("paired", paired_comparisons(long_table(scan), scan.samples), tmp_path / "x.png", "knn")
        drawer._workers[0].kill()  # still importing matplotlib: it cannot have answered yet
        with pytest.raises(RuntimeError, match=r"the figure worker drawing 'paired' exited \(code -9\) without an answer"):
            drawer.finish()
    finally:
        drawer.close()
