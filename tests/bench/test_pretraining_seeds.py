"""Pretraining seeds in the leaderboard: twins paired per pretraining seed, intervals over pretraining
seeds when there are two or more, and every table naming what its interval covers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.leaderboard import write_suite_tables
from bench.store import SCHEMA_VERSION, ResultStore, publish_json_once
from bench.suite import Metric


def _store(root, suite, sampler, ckpt_seed, samples, seed=0):
    cid = f"{sampler}-p{ckpt_seed}-e{seed}"
    ids = [f"ep{i}" for i in range(len(samples))]
    checkpoint = {"path": f"/x/{sampler}{ckpt_seed}.pt", "sha256": f"{sampler}{ckpt_seed}".ljust(64, "0"),
                  "method": "simclr", "sampler": sampler, "sampler_params": {}, "arch": "resnet18",
                  "pretrain_dataset": "digits", "epochs": 20, "seed": ckpt_seed}
    result = {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": suite, "protocol_version": "1",
              "task": {"name": "digits", "params": {}}, "seed": seed,
              "metrics": {"acc/ncc": Metric.from_samples(samples, ids).to_json()},
              "checkpoint": checkpoint, "code_version": "test", "engine": "e"}
    folder = ResultStore(root, suite).cell(cid).path
    folder.mkdir(parents=True)
    assert publish_json_once(folder / "result.json", result)


def test_twins_are_paired_per_pretraining_seed_and_over_pretraining_seeds(tmp_path):
    rng = np.random.default_rng(0)
    nce_shift, ring_shift = {0: 95.0, 1: 93.0, 2: 94.0}, {0: 92.0, 1: 89.5, 2: 91.0}
    base = rng.normal(0, 2, 40)
    for seed in (0, 1, 2):
        _store(tmp_path, "meta_dataset", "nce", seed, (base + nce_shift[seed]).tolist())
        _store(tmp_path, "meta_dataset", "ring", seed, (base + ring_shift[seed] + rng.normal(0, 1, 40)).tolist())
    write_suite_tables(tmp_path, "meta_dataset", plot=False)
    paired = pd.read_csv(tmp_path / "meta_dataset_paired.csv", dtype={"ckpt_seed": str, "seed": str})
    per_seed = paired[paired["ckpt_seed"] != "all"]
    assert sorted(per_seed["ckpt_seed"]) == ["0", "1", "2"]  # one twin pair per pretraining seed
    assert set(per_seed["interval"]) == {"episodes (images in mode=linear)"}
    over = paired[paired["ckpt_seed"] == "all"]
    assert len(over) == 1
    row = over.iloc[0]
    diffs = per_seed.sort_values("ckpt_seed")["mean_diff"].to_numpy()
    assert row["n"] == 3 and row["interval"] == "pretraining seeds"
    assert row["mean_diff"] == pytest.approx(diffs.mean())
    assert row["ci95_diff"] == pytest.approx(stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3))
    assert row["p_ttest"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    assert "(pretraining seeds 0,1,2)" in row["sampler_model"]

    families = pd.read_csv(tmp_path / "meta_dataset_pretraining_seeds.csv")
    assert sorted(families["sampler"]) == ["nce", "ring"]
    nce = families[families["sampler"] == "nce"].iloc[0]
    means = np.array([np.mean(base + nce_shift[s]) for s in (0, 1, 2)])
    assert nce["n"] == 3 and nce["mean"] == pytest.approx(means.mean())
    assert nce["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3))

    ranked = pd.read_csv(tmp_path / "meta_dataset.csv")
    assert set(ranked["interval"]) == {"episodes (images in mode=linear)"}
    md = (tmp_path / "meta_dataset.md").read_text()
    assert "Intervals cover the variance over: episodes (images in mode=linear)" in md
    assert "## Over pretraining seeds" in md and "95% CI (pretraining seeds)" in md
    assert "| pretraining seeds |" in md  # the paired row over pretraining seeds names its interval


def test_one_pretraining_seed_gives_no_interval_over_pretraining_seeds_and_seeds_are_named(tmp_path):
    for seed in (0, 1):  # two fine-tuning seeds of one pretraining seed
        _store(tmp_path, "coco_det", "nce", 0, [30.0 + seed, 32.0 + seed], seed=seed)
        _store(tmp_path, "coco_det", "ring", 0, [29.0 + seed, 30.0 + seed], seed=seed)
    write_suite_tables(tmp_path, "coco_det", plot=False)
    assert not (tmp_path / "coco_det_pretraining_seeds.csv").exists()
    paired = pd.read_csv(tmp_path / "coco_det_paired.csv", dtype={"ckpt_seed": str, "seed": str})
    assert "all" not in set(paired["ckpt_seed"])
    assert set(paired.loc[paired["seed"] == "all", "interval"]) == {"fine-tuning seeds"}
    ranked = pd.read_csv(tmp_path / "coco_det.csv")
    assert set(ranked["interval"]) == {"fine-tuning seeds"}
    assert "Intervals cover the variance over: fine-tuning seeds" in (tmp_path / "coco_det.md").read_text()
