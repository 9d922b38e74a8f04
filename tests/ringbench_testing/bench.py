"""Shared test helpers for the runner tests: real (randomly initialised) encoder checkpoints, the bench CLI in a
subprocess, a plan run in-process, and their fixtures (re-exported by the conftest files that use them).

A package under the project's own name, not `tests.*`: an editable Detectron2 puts its checkout on sys.path,
and its regular `tests` package would shadow this repository's `tests` folder (a namespace package).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_encoder(path: Path, sampler: str, seed: int, method: str = "moco", image_size: int = 8) -> Path:
    import torch

    from pretrain.backbones import build_backbone
    from pretrain.checkpoint import encoder_metadata, save_encoder

    torch.manual_seed(seed)
    backbone = build_backbone("resnet18", "imagenet")
    metadata = encoder_metadata(method=method, sampler=sampler, arch="resnet18", stem="imagenet",
                                pretrain_dataset="digits", epochs=0, image_size=image_size, mean=[0.5, 0.5, 0.5],
                                std=[0.25, 0.25, 0.25], config={"test": True}, seed=0)
    return save_encoder(path, backbone, metadata)


@pytest.fixture(scope="session")
def encoder_pair(tmp_path_factory) -> list[Path]:
    """An NCE/Ring twin pair (same method, data, epochs, seed): different random weights."""
    folder = tmp_path_factory.mktemp("encoders")
    return [make_encoder(folder / "nce.pt", "nce", 0), make_encoder(folder / "ring.pt", "ring", 1)]


@pytest.fixture
def bench_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for a `python -m bench.run` subprocess: repo importable, private cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RINGBENCH_CACHE", str(cache))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["RINGBENCH_CACHE"] = str(cache)
    env.pop("RINGBENCH_RESULTS", None)
    return env


def run_bench(args: list[str], env: dict[str, str], timeout: float = 240, module: str = "bench.run"):
    import subprocess

    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def job_env(tmp_path, monkeypatch):
    """In-process runs: private cache, and the repo importable by job subprocesses."""
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


def plan_and_run(suite_name: str, results: Path, executor: str, overrides=(), checkpoints=(), **runner_kwargs):
    """Plan a suite and run it through the real runner in this process (the CLI's path: bench.execute.run_suite),
    on the executor registered as `executor`; returns (plan, summary)."""
    import io

    from bench.execute import run_suite
    from slurm.executors import execution_named
    from slurm.profiles import PROFILES

    stream = runner_kwargs.pop("stream", io.StringIO())
    run = run_suite(suite_name, results_root=results, execution=execution_named(executor), profiles=PROFILES,
                    option_pairs=list(overrides), checkpoint_specs=[str(c) for c in checkpoints], stream=stream,
                    poll_s=0.2, **runner_kwargs)
    return run.plan, run.summary


# --suite pretrain --then knn, shared by the debug-executor and SLURM chain tests
TINY = 'overrides={"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 32, "image_size": 8, "knn_every": 0}'


def check_chain(results) -> None:
    import pandas as pd

    pretrain = pd.read_csv(results / "pretrain.csv")
    assert sorted(pretrain["model"].unique()) == ["digits_default_nce", "digits_default_ring"]
    encoders = []
    for result_path in (results / "pretrain" / "cells").glob("*/result.json"):
        encoder = json.loads(result_path.read_text())["info"]["encoder"]
        assert encoder.startswith(str(result_path.parent.resolve()))  # trained inside its own cell folder
        encoders.append(encoder)
    knn = [json.loads(p.read_text()) for p in (results / "knn" / "cells").glob("*/result.json")]
    assert sorted(r["checkpoint"]["path"] for r in knn) == sorted(encoders)
    assert {r["checkpoint"]["sampler"] for r in knn} == {"nce", "ring"}
    paired = pd.read_csv(results / "knn_paired.csv")
    assert len(paired) == 2 and set(paired["n"]) == {360}  # the twins share method, data, epochs, seed

