"""TensorFlow is an optional extra (`pip install 'ringbench[meta-dataset]'`): without it every suite but
meta_dataset plans and runs, and meta_dataset says in one line which extra to install.

TensorFlow is installed where the tests run (its record reader is tested), so its absence is simulated: a
`sitecustomize` on PYTHONPATH swaps sys.path's finder for one that does not see `tensorflow`, in the runner and
in every job it starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ringbench_testing.bench import REPO, run_bench

BLOCKER = '''
import importlib.machinery
import sys


class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    """sys.path's finder, as if TensorFlow were not installed: find_spec answers None, import raises."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [PathFinderWithoutTensorFlow if finder is importlib.machinery.PathFinder else finder
                    for finder in sys.meta_path]
'''


@pytest.fixture
def env_without_tensorflow(tmp_path, bench_env):
    site = tmp_path / "no_tensorflow"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return bench_env | {"PYTHONPATH": f"{site}:{bench_env['PYTHONPATH']}"}


def test_the_blocker_hides_tensorflow(env_without_tensorflow):
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env_without_tensorflow, cwd=REPO,
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'tensorflow'" in probe.stderr


def test_knn_plans_and_runs_without_tensorflow(tmp_path, env_without_tensorflow, encoder_pair):
    dry = run_bench(["--suite", "knn", "--dry-run", "--results", str(tmp_path / "dry")], env_without_tensorflow)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing submitted" in dry.stdout
    out = run_bench(["--suite", "knn", "ks=5", "--checkpoints", str(encoder_pair[0]), "--executor", "local",
                     "--results", str(tmp_path / "results")], env_without_tensorflow, timeout=600)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "results" / "knn" / "cells").glob("*/result.json"))


def test_meta_dataset_names_the_extra_in_one_line(tmp_path, env_without_tensorflow, encoder_pair):
    out = run_bench(["--suite", "meta_dataset", "--checkpoints", str(encoder_pair[0]), "--dry-run",
                     "--results", str(tmp_path / "results")], env_without_tensorflow)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install 'ringbench[meta-dataset]'" in errors[0]
    assert "Traceback" not in out.stderr


def test_training_curves_are_written_without_tensorflow(tmp_path, env_without_tensorflow):
    script = ("import sys; from pretrain.events import summary_writer; w = summary_writer(sys.argv[1]); "
              "w.add_scalar('loss', 1.0, 0); w.close(); "
              "assert 'tensorboard.compat.notf' not in sys.modules  # no patch where TensorFlow is absent\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "events")], env=env_without_tensorflow,
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "events").glob("events.out.tfevents.*"))
