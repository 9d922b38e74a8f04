"""Curves over pretraining, the paired forest plot and the headline view, from stored cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.figures import curve_table, forest_rows, headline_metrics, is_snapshot, plot_curves, plot_paired
from bench.leaderboard import long_table, scan_suite, write_suite_tables
from bench.store import SCHEMA_VERSION, ResultStore, publish_json_once
from bench.suite import Metric

RUN_EPOCHS = 4


def store_snapshot_cell(root, sampler, epoch, samples, seed=0, ckpt_seed=0, metrics=("acc/k20", "loss/x")):
    """A knn-like result of an encoder snapshot taken after `epoch` of a RUN_EPOCHS-epoch run."""
    ids = [f"img{i}" for i in range(len(samples))]
    sha = f"{sampler}-{ckpt_seed}-{epoch}".ljust(64, "0")
    checkpoint = {"path": f"/runs/{sampler}/encoder_e{epoch:04d}.pt", "sha256": sha, "method": "moco",
                  "sampler": sampler, "sampler_params": {}, "arch": "resnet18", "pretrain_dataset": "digits",
                  "epochs": RUN_EPOCHS, "seed": ckpt_seed, "epoch": epoch,
                  "w_out": (1.0 - 0.25 * (epoch - 1)) if sampler == "ring" else None}
    cid = f"{sha[:12]}-{seed}"
    result = {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": "knn", "protocol_version": "1",
              "task": {"name": "digits", "params": {}}, "seed": seed, "checkpoint": checkpoint,
              "metrics": {name: Metric.from_samples(samples, ids).to_json() for name in metrics},
              "code_version": "test", "engine": "torch-knn"}
    folder = ResultStore(root, "knn").cell(cid).path
    folder.mkdir(parents=True)
    assert publish_json_once(folder / "result.json", result)


def store_twin_runs(root, seeds=(0,)):
    rng = np.random.default_rng(0)
    for epoch in range(1, RUN_EPOCHS + 1):
        for sampler, shift in (("nce", 0.0), ("ring", 5.0)):
            for seed in seeds:
                store_snapshot_cell(root, sampler, epoch, list(50 + 10 * epoch + shift + rng.normal(0, 3, 40)), seed)


def test_curves_hold_one_row_per_model_task_metric_and_epoch(tmp_path):
    store_twin_runs(tmp_path, seeds=(0, 1))
    store_snapshot_cell(tmp_path, "dcl", RUN_EPOCHS, [60.0, 70.0])  # one epoch only: no curve for it
    long = long_table(scan_suite(tmp_path, "knn"))
    curves = curve_table(long)
    assert sorted(curves["model"].unique()) == ["moco/nce digits e4 s0", "moco/ring digits e4 s0"]
    assert not curves.duplicated(["model", "task", "metric", "epoch"]).any()
    assert len(curves) == 2 * RUN_EPOCHS * 2  # models x epochs x metrics
    ring = curves[(curves["sampler"] == "ring") & (curves["metric"] == "acc/k20")].set_index("epoch")
    assert list(ring.index) == [1, 2, 3, 4] and list(ring["w_out"]) == [1.0, 0.75, 0.5, 0.25]
    assert (ring["n_seeds"] == 2).all()
    # two evaluation seeds: their mean, and the interval from their spread
    both = long[(long["sampler"] == "ring") & (long["epoch"] == 2) & (long["metric"] == "acc/k20")]["mean"]
    assert ring.loc[2, "mean"] == pytest.approx(both.mean())
    assert ring.loc[2, "ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * both.std(ddof=1) / np.sqrt(2))
    assert list(is_snapshot(long)) == list(long["epoch"] < RUN_EPOCHS)


def test_the_leaderboard_ranks_final_encoders_and_draws_curves_from_snapshots(tmp_path):
    store_twin_runs(tmp_path)
    written = {p.name for p in write_suite_tables(tmp_path, "knn")}
    assert {"knn.csv", "knn.md", "knn.png", "knn_paired.csv", "knn_paired.png", "knn_curves.csv",
            "knn_curves.png"} <= written
    ranked = pd.read_csv(tmp_path / "knn.csv")
    assert ranked["model"].nunique() == 2 and set(ranked["epochs"]) == {RUN_EPOCHS}  # the final encoders only
    assert set(ranked["metric"]) == {"acc/k20", "loss/x"}  # the CSV keeps every metric
    paired = pd.read_csv(tmp_path / "knn_paired.csv")
    assert len(paired) == 2  # the final twins, per metric; snapshots are not paired
    markdown = (tmp_path / "knn.md").read_text()
    assert "acc/k20" in markdown and "loss/x" not in markdown  # the Markdown shows headline metrics
    assert "knn_curves.png" in markdown
    curves = pd.read_csv(tmp_path / "knn_curves.csv")
    assert len(curves) == 2 * RUN_EPOCHS * 2
    assert (tmp_path / "knn_curves.png").stat().st_size > 20_000


def test_a_single_epoch_per_model_writes_no_curves(tmp_path):
    for sampler in ("nce", "ring"):
        store_snapshot_cell(tmp_path, sampler, RUN_EPOCHS, [50.0, 60.0, 70.0])
    written = {p.name for p in write_suite_tables(tmp_path, "knn")}
    assert "knn_curves.csv" not in written and not (tmp_path / "knn_curves.png").exists()


def test_headline_metrics_and_their_fallback():
    assert headline_metrics(["bbox/AP", "bbox/AP50", "segm/AP", "keypoints/AP", "segm/APs"]) == [
        "bbox/AP", "keypoints/AP", "segm/AP"]
    assert headline_metrics(["acc/ncc", "acc/logreg", "time/s"]) == ["acc/logreg", "acc/ncc"]
    assert headline_metrics(["top1/linear", "top1/knn", "train/loss"]) == ["top1/knn", "top1/linear"]
    assert headline_metrics(["mi/nce", "bias/nce"]) == ["bias/nce", "mi/nce"]  # none is headline: all


def test_the_forest_plot_uses_the_comparison_over_seeds_and_sorts_by_effect(tmp_path):
    base = {"suite": "coco_det", "sampler": "ring", "baseline": "nce", "sampler_model": "r", "baseline_model": "n", "method": "moco", "pretrain_dataset": "d",
            "epochs": 4, "ckpt_seed": 0, "arch": "resnet18", "sampler_mean": 0.0, "baseline_mean": 0.0, "p_ttest": 1.0,
            "p_sign": 1.0, "test": "t"}
    rows = [base | {"task": "mask", "metric": "bbox/AP", "seed": s, "n": 10, "mean_diff": d, "ci95_diff": 1.0}
            for s, d in (("0", 1.0), ("1", 3.0), ("all", 2.0))]
    rows += [base | {"task": "kp", "metric": "keypoints/AP", "seed": "0", "n": 10, "mean_diff": -4.0, "ci95_diff": 1.0},
             base | {"task": "kp", "metric": "bbox/AP50", "seed": "0", "n": 10, "mean_diff": 9.0, "ci95_diff": 1.0}]
    paired = pd.DataFrame(rows)
    chosen = forest_rows(paired)
    assert sorted(zip(chosen["task"], chosen["seed"])) == [("kp", "0"), ("mask", "all")]
    path = plot_paired(paired, tmp_path / "coco_det_paired.png", "coco_det")
    assert path is not None and path.stat().st_size > 10_000
    assert plot_paired(paired.iloc[0:0], tmp_path / "none.png", "x") is None


def test_plot_curves_draws_nothing_without_a_curve(tmp_path):
    assert plot_curves(curve_table(pd.DataFrame(columns=long_table(scan_suite(tmp_path, "knn")).columns)),
                       tmp_path / "c.png", "knn") is None
