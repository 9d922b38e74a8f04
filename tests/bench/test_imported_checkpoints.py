"""Published checkpoints through `bench.run --checkpoints`: imported on the fly into the cache, evaluated,
identified by their source's sha256 and the mapping version; refused files stop the run before it starts."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from ringbench_testing import published
from ringbench_testing.bench import run_bench


def _write(builder, path, **kwargs):
    payload, _ = builder(**kwargs)
    torch.save(payload, path)
    return path


@pytest.fixture
def foreign_pair(tmp_path):
    """Two official-Ring Lightning checkpoints, the MoCo-based and the IR-based system (their CIFAR stem keeps
    the digits at 32 px; the 224 px MoCo v2 file goes through the detection suite below)."""
    return (_write(published.ring_official, tmp_path / "ring_moco_epoch=199.ckpt"),
            _write(published.ring_official, tmp_path / "ring_ir_epoch=199.ckpt", moco=False))


def _results(root, suite):
    return [json.loads(p.read_text()) for p in sorted((root / suite / "cells").glob("*/result.json"))]


@pytest.mark.slow
def test_two_foreign_files_side_by_side_then_reused(tmp_path, foreign_pair, bench_env):
    first, second = foreign_pair
    results = tmp_path / "results"
    args = ["--suite", "knn", "--checkpoints", f"{first},{second}", "--executor", "local", "--results", str(results),
            "--no-progress", "ks=5"]
    out = run_bench(args, bench_env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    for source in foreign_pair:
        assert out.stderr.count(f"imported {source.name}") == 1
    assert out.stderr.count("as ring_official") == 2
    stored = _results(results, "knn")
    assert len(stored) == 2
    sources = {r["checkpoint"]["imported"]["source_file"]: r for r in stored}
    assert set(sources) == {first.name, second.name}
    assert len({r["checkpoint"]["imported"]["source_sha256"] for r in stored}) == 2
    for result in stored:
        checkpoint = result["checkpoint"]
        assert checkpoint["method"] == "unknown" and checkpoint["epochs"] == "unknown"
        assert checkpoint["path"].startswith(bench_env["RINGBENCH_CACHE"])  # the imported encoder in the cache
        assert 30 < result["metrics"]["acc/k5"]["mean"] <= 100
        assert result["info"]["image_size"] == 32  # the official code's conv3x3 CIFAR stem
    table = pd.read_csv(results / "knn.csv")
    assert len(table) == 2 and table["model"].str.startswith("unknown/unknown").all()

    again = run_bench(args, bench_env, timeout=600)  # cached import, finished cells: nothing imported or rerun
    assert again.returncode == 0, again.stderr[-3000:]
    assert "imported " not in again.stderr
    assert [r["cell_id"] for r in _results(results, "knn")] == [r["cell_id"] for r in stored]


def test_cell_identity_is_the_source_sha256_and_mapping_version(tmp_path, job_env, monkeypatch):
    from bench.plan import build_plan
    from bench.suites import load_suite
    from pretrain import importers

    source = _write(published.torchvision_supervised, tmp_path / "resnet18-supervised.pth")

    def plan_ids():
        plan = build_plan("knn", load_suite("knn"), results_root=tmp_path / "results", option_pairs=["ks=5"],
                          checkpoint_specs=[str(source)])
        return [planned.cell_id for planned in plan.cells], plan

    first, plan = plan_ids()
    assert plan.cells[0].cell.checkpoint.parent.parent == importers.imports_dir()  # cells evaluate the import
    assert plan_ids()[0] == first  # same file, same mapping: same cell
    monkeypatch.setattr(importers, "MAPPING_VERSION", importers.MAPPING_VERSION + 1)
    bumped, _ = plan_ids()
    assert bumped != first  # a new mapping version never reuses a result
    monkeypatch.setattr(importers, "MAPPING_VERSION", importers.MAPPING_VERSION - 1)
    payload, _ = published.torchvision_supervised()
    payload["conv1.weight"] = payload["conv1.weight"] + 1  # the same name, other contents
    torch.save(payload, source)
    changed, _ = plan_ids()
    assert changed not in (first, bumped)


def test_a_refused_file_is_one_line_before_anything_runs(tmp_path, bench_env):
    payload, _ = published.solo_learn(cifar=True)
    torch.save(payload, tmp_path / "solo.ckpt")
    good = _write(published.torchvision_supervised, tmp_path / "ok.pth")
    results = tmp_path / "results"
    out = run_bench(["--suite", "knn", "--checkpoints", f"{good},{tmp_path / 'solo.ckpt'}", "--executor", "local",
                     "--results", str(results), "--no-progress"], bench_env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "solo.ckpt" in errors[0] and "padding 2" in errors[0]
    assert not (results / "knn" / "cells").exists() or not any((results / "knn" / "cells").iterdir())


@pytest.mark.slow
def test_imported_files_through_linear_meta_dataset_and_detection(tmp_path, bench_env):
    """The other suites on the embedded data, each as small as its options allow: the official-Ring file
    (32 px) through linear and meta_dataset, a MoCo v2 file (ImageNet stem, 224 px) through detection with the
    torchvision engine (Detectron2 is not needed)."""
    ring = _write(published.ring_official, tmp_path / "ring_epoch=199.ckpt")
    moco = _write(published.moco, tmp_path / "moco_v2_200ep_pretrain.pth.tar", arch="resnet18")
    results = tmp_path / "results"
    bench_env = dict(bench_env, RINGBENCH_WORKERS="0")
    runs = {
        "linear": (ring, "ring_official", ["protocol=fast"]),
        "meta_dataset": (ring, "ring_official", ["episodes=10"]),
        "coco_det": (moco, "moco", ["engine=torchvision", "max_iter=2", "--seeds", "0", "--tasks", "digits/mask_rcnn"]),
    }
    for suite, (source, format_name, extra) in runs.items():
        out = run_bench(["--suite", suite, "--checkpoints", str(source), "--executor", "debug", "--results",
                         str(results), "--no-progress", *extra], bench_env, timeout=1800)
        assert out.returncode == 0, f"{suite}: {out.stderr[-3000:]}"
        stored = _results(results, suite)
        assert stored and all(r["checkpoint"]["imported"]["format"] == format_name for r in stored), suite
        assert all(r["checkpoint"]["imported"]["source_file"] == source.name for r in stored), suite
