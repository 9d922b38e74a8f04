"""--follow: each encoder a pretraining run publishes is evaluated exactly once, across restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.follow import published_encoders
from bench.store import read_events
from ringbench_testing.bench import REPO, run_bench

# three epochs of a few steps at 8 px: snapshots after epochs 1 and 2, then encoder.pt
TINY_RUN = ["epochs=3", "snapshot_every=1", "max_steps_per_epoch=1", "batch_size=16", "image_size=8",
            "knn_every=0", "num_negatives=64"]
RECIPE = "digits_ir_nce"


def start_pretraining(out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pretrain.train", "--recipe", RECIPE, *TINY_RUN, "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def follow_args(run: Path, results: Path, executor: str) -> list[str]:
    return ["--suite", "knn", "--follow", str(run), "--executor", executor, "--results", str(results),
            "--follow-poll", "1", "--no-progress"]


def check_each_encoder_evaluated_once(run: Path, results: Path, executor: str) -> None:
    encoders = published_encoders(run)
    assert [p.name for p in encoders] == ["encoder_e0001.pt", "encoder_e0002.pt", "encoder.pt"]
    cells = [p for p in (results / "knn" / "cells").iterdir() if p.is_dir()]
    stored = [json.loads((c / "result.json").read_text()) for c in cells]
    assert sorted(r["checkpoint"]["path"] for r in stored) == sorted(str(p.resolve()) for p in encoders)
    assert sorted(r["checkpoint"]["epoch"] for r in stored) == [1, 2, 3]
    assert {r["job"]["executor"] for r in stored} == {executor}
    for cell in cells:
        events = [e["event"] for e in read_events(cell)]
        assert events.count("submitted") == 1 and events.count("result_written") == 1, (cell.name, events)
    curves = pd.read_csv(results / "knn_curves.csv")
    assert not curves.duplicated(["model", "task", "metric", "epoch"]).any()
    assert len(curves) == 1 * 3 * 2  # one model x three epochs x (acc/k20, acc/k200)
    assert sorted(curves["epoch"].unique()) == [1, 2, 3]
    ranked = pd.read_csv(results / "knn.csv")
    assert ranked["model"].nunique() == 1 and "e3" in ranked["model"].iloc[0]  # the final encoder is ranked


def test_published_encoders_are_complete_files_in_epoch_order(tmp_path):
    for name in ["encoder_e0010.pt", "encoder_e0002.pt", ".encoder_e0011.pt.abc.tmp", "train.state.pt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in published_encoders(tmp_path)] == ["encoder_e0002.pt", "encoder_e0010.pt"]
    (tmp_path / "encoder.pt").write_bytes(b"x")
    assert published_encoders(tmp_path)[-1].name == "encoder.pt"
    assert published_encoders(tmp_path / "absent") == []


def test_follow_refuses_what_is_not_a_run_folder(tmp_path, bench_env):
    out = run_bench(["--suite", "knn", "--follow", str(tmp_path / "nope"), "--results", str(tmp_path / "r")], bench_env)
    assert out.returncode == 2 and "nope: no such folder" in out.stderr
    (tmp_path / "empty").mkdir()
    out = run_bench(["--suite", "knn", "--follow", str(tmp_path / "empty"), "--results", str(tmp_path / "r")], bench_env)
    assert out.returncode == 2 and "not a pretraining run folder" in out.stderr
    out = run_bench(["--suite", "selftest", "--follow", str(tmp_path / "empty"), "--results", str(tmp_path / "r")],
                    bench_env)
    assert out.returncode == 2 and "evaluates no checkpoint" in out.stderr
    assert not (tmp_path / "r").exists()  # nothing submitted


@pytest.mark.slow
def test_follow_on_the_local_executor_survives_a_kill_while_pretraining_runs(tmp_path, bench_env):
    run, results = tmp_path / "run", tmp_path / "results"
    training = start_pretraining(run, bench_env)
    deadline = time.time() + 600
    while not (run / "config.json").exists():  # the follower needs a run folder to exist
        assert training.poll() is None and time.time() < deadline, training.stderr.read()[-2000:]
        time.sleep(0.5)
    follower = subprocess.Popen([sys.executable, "-m", "bench.run", *follow_args(run, results, "local")], cwd=REPO,
                                env=bench_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not list((results / "knn" / "cells").glob("*/result.json")):  # the first encoder's cell is done
        assert follower.poll() is None and time.time() < deadline, follower.stderr.read()[-3000:]
        time.sleep(0.5)
    follower.send_signal(signal.SIGKILL)  # killed mid-run: its local jobs live on, nothing is written for them
    follower.wait()
    again = run_bench(follow_args(run, results, "local"), bench_env, timeout=900)
    assert training.wait(timeout=600) == 0, training.stderr.read()[-2000:]
    assert again.returncode == 0, again.stderr[-3000:]
    check_each_encoder_evaluated_once(run, results, "local")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from pretrain.recipes import recipe_config
    from pretrain.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(recipe_config(RECIPE, TINY_RUN), out, show_progress=False, allow_distributed=False)
    return out


@pytest.mark.slow
def test_follow_in_the_debug_executor_then_a_second_follow_submits_nothing(finished_run, tmp_path, bench_env):
    results = tmp_path / "results"
    first = run_bench(follow_args(finished_run, results, "debug"), bench_env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 encoder(s): submitted 3 cell(s), kept 0" in first.stderr
    second = run_bench(follow_args(finished_run, results, "debug"), bench_env, timeout=900)
    assert second.returncode == 0 and "submitted 0 cell(s), kept 3" in second.stderr, second.stderr[-3000:]
    check_each_encoder_evaluated_once(finished_run, results, "debug")
