"""Leaderboard maths: CI-aware tied ranks, seed aggregation, paired sampler-vs-NCE statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.leaderboard import (
    aggregate,
    long_table,
    paired_comparisons,
    rank_table,
    scan_suite,
    tied_ranks,
    write_suite_tables,
)
from bench.store import SCHEMA_VERSION, ResultStore, publish_json_once
from bench.suite import Metric


def test_models_within_the_interval_of_the_best_tie_and_share_the_average_rank():
    # best 80 +- 1; 79.5 +- 1 is within sqrt(2) of it; 70 is clearly worse; 69.8 ties with 70
    ranks = tied_ranks(np.array([80.0, 79.5, 70.0, 69.8]), np.array([1.0, 1.0, 0.5, 0.5]))
    assert ranks.tolist() == [1.5, 1.5, 3.5, 3.5]


def test_lower_is_better_and_missing_values_get_no_rank():
    ranks = tied_ranks(np.array([0.2, 0.1, np.nan]), np.array([0.0, 0.0, 0.0]), higher_is_better=False)
    assert ranks[0] == 2 and ranks[1] == 1 and np.isnan(ranks[2])


def test_all_tied_models_share_the_middle_rank():
    assert tied_ranks(np.array([1.0, 1.1, 0.9]), np.array([5.0, 5.0, 5.0])).tolist() == [2.0, 2.0, 2.0]


def _store_cell(root, cid, sampler, task, samples, seed=0, method="moco", sha=None):
    ids = [f"ep{i}" for i in range(len(samples))]
    metric = Metric.from_samples(samples, ids).to_json()
    checkpoint = {"path": f"/x/{sampler}.pt", "sha256": sha or (sampler * 16)[:64], "method": method,
                  "sampler": sampler, "sampler_params": {}, "arch": "resnet18", "pretrain_dataset": "digits",
                  "epochs": 10, "seed": 0}
    result = {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": "s", "protocol_version": "1",
              "task": {"name": task, "params": {}}, "seed": seed, "metrics": {"acc": metric},
              "checkpoint": checkpoint, "code_version": "test", "engine": "e"}
    folder = ResultStore(root, "s").cell(cid).path
    folder.mkdir(parents=True)
    assert publish_json_once(folder / "result.json", result)


def test_paired_statistics_match_scipy_and_use_only_shared_samples(tmp_path):
    rng = np.random.default_rng(0)
    nce = rng.normal(60, 10, 50)
    ring = nce + rng.normal(2, 3, 50)
    _store_cell(tmp_path, "c-nce", "nce", "omniglot", nce.tolist())
    _store_cell(tmp_path, "c-ring", "ring", "omniglot", ring.tolist()[:45])  # 5 episodes missing
    scan = scan_suite(tmp_path, "s")
    paired = paired_comparisons(long_table(scan), scan.samples)
    assert len(paired) == 1
    row = paired.iloc[0]
    diff = ring[:45] - nce[:45]
    assert row["n"] == 45
    assert row["mean_diff"] == pytest.approx(diff.mean())
    assert row["ci95_diff"] == pytest.approx(stats.t.ppf(0.975, 44) * diff.std(ddof=1) / np.sqrt(45))
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(ring[:45], nce[:45]).pvalue)
    assert row["p_sign"] == pytest.approx(stats.binomtest(int((diff > 0).sum()), 45).pvalue)


def test_twins_under_several_seeds_are_also_compared_over_seeds(tmp_path):
    nce_means, ring_means = [50.0, 58.0, 61.0], [53.0, 57.0, 66.0]
    for seed, (n_mean, r_mean) in enumerate(zip(nce_means, ring_means)):
        _store_cell(tmp_path, f"n{seed}", "nce", "t", [n_mean - 1.0, n_mean + 1.0], seed=seed)
        _store_cell(tmp_path, f"r{seed}", "ring", "t", [r_mean - 2.0, r_mean + 2.0], seed=seed)
    _store_cell(tmp_path, "r-other", "ring", "u", [1.0, 2.0], seed=0)  # one seed only: no row over seeds
    scan = scan_suite(tmp_path, "s")
    paired = paired_comparisons(long_table(scan), scan.samples)
    over = paired[paired["seed"] == "all"]
    assert len(paired) == 4 and len(over) == 1
    row = over.iloc[0]
    diff = np.array(ring_means) - np.array(nce_means)
    assert (row["task"], row["n"]) == ("t", 3)
    assert (row["sampler"], row["baseline"]) == ("ring", "nce")
    assert (row["sampler_mean"], row["baseline_mean"]) == (pytest.approx(np.mean(ring_means)), pytest.approx(np.mean(nce_means)))
    assert row["mean_diff"] == pytest.approx(diff.mean())
    assert row["ci95_diff"] == pytest.approx(stats.t.ppf(0.975, 2) * diff.std(ddof=1) / np.sqrt(3))
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(ring_means, nce_means).pvalue)
    assert row["p_sign"] == pytest.approx(stats.binomtest(2, 3).pvalue)


def test_twins_must_share_method_and_several_seeds_are_averaged(tmp_path):
    _store_cell(tmp_path, "a0", "nce", "t", [50.0, 60.0], seed=0)
    _store_cell(tmp_path, "a1", "nce", "t", [70.0, 80.0], seed=1)
    _store_cell(tmp_path, "b0", "ring", "t", [1.0, 2.0], method="simclr")
    scan = scan_suite(tmp_path, "s")
    long = long_table(scan)
    assert paired_comparisons(long, scan.samples).empty  # simclr/ring has no simclr/nce twin
    agg = aggregate(long)
    nce = agg[agg["sampler"] == "nce"].iloc[0]
    assert (nce["mean"], nce["n_seeds"], nce["n"]) == (65.0, 2, 2)
    # two seeds (55, 75): sd 14.14 (ddof=1), and the t quantile with one degree of freedom, 12.71
    assert nce["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std([55.0, 75.0], ddof=1) / np.sqrt(2))
    ranked = rank_table(agg).set_index("sampler")
    # 65 against 1.5 is a tie: two seeds that differ by 20 leave the mean uncertain by +-127
    assert ranked.loc["nce", "rank"] == ranked.loc["ring", "rank"] == 1.5


def test_leaderboard_reads_only_valid_files(tmp_path):
    _store_cell(tmp_path, "good", "nce", "t", [1.0, 2.0])
    bad = ResultStore(tmp_path, "s").cell("bad").path
    bad.mkdir(parents=True)
    (bad / "result.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION})[:-3])
    scan = scan_suite(tmp_path, "s")
    assert len(scan.rows) == 1 and len(scan.corrupt) == 1 and "bad/result.json" in scan.corrupt[0]
    long = long_table(scan)  # the table holds the good cell's numbers only, nothing of the corrupt one
    assert len(long) == 1 and long.iloc[0]["sampler"] == "nce" and long.iloc[0]["mean"] == pytest.approx(1.5)


def test_the_table_says_which_engine_produced_each_number(tmp_path):
    from bench.leaderboard import markdown_table

    _store_cell(tmp_path, "c-nce", "nce", "coco", [30.0, 40.0])
    _store_cell(tmp_path, "c-ring", "ring", "coco", [20.0, 30.0])
    ranked = rank_table(aggregate(long_table(scan_suite(tmp_path, "s"))))
    assert set(ranked["engine"]) == {"e"}
    header = markdown_table(ranked).splitlines()[0]
    assert header.startswith("| model | engine | avg rank |")


def _store_knn_cell(root, cid, sampler, samples, seed=0, temperature=0.07, dataset_sha="d" * 64):
    """A result as the knn suite stores it: options, task params and the dataset fingerprint."""
    ids = [f"img{i}" for i in range(len(samples))]
    options = {"ks": [20, 200], "temperature": temperature, "batch_size": 256, "device": ""}
    checkpoint = {"path": f"/x/{sampler}.pt", "sha256": (sampler * 16)[:64], "method": "moco", "sampler": sampler,
                  "sampler_params": {}, "arch": "resnet18", "pretrain_dataset": "digits", "epochs": 10, "seed": 0}
    result = {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": "knn", "protocol_version": "1",
              "task": {"name": "digits", "params": {"ks": [20, 200], "temperature": temperature}}, "seed": seed,
              "options": options, "metrics": {"acc/k20": Metric.from_samples(samples, ids).to_json()},
              "dataset": {"name": "digits", "sha256": dataset_sha, "files": 1, "label": f"digits:{dataset_sha[:8]}"},
              "checkpoint": checkpoint, "code_version": "test", "engine": "torch-knn"}
    folder = ResultStore(root, "knn").cell(cid).path
    folder.mkdir(parents=True)
    assert publish_json_once(folder / "result.json", result)


def test_settings_are_separate_rows_never_averaged_as_seeds_and_twins_pair_within_one(tmp_path):
    _store_knn_cell(tmp_path, "n-t007", "nce", [100.0, 0.0, 100.0, 100.0])
    _store_knn_cell(tmp_path, "n-t05", "nce", [0.0, 0.0, 100.0, 0.0], temperature=0.5)
    _store_knn_cell(tmp_path, "r-t007", "ring", [100.0, 100.0, 100.0, 100.0])
    _store_knn_cell(tmp_path, "r-t05", "ring", [100.0, 0.0, 0.0, 0.0], temperature=0.5)
    scan = scan_suite(tmp_path, "knn")
    agg = aggregate(long_table(scan))
    assert len(agg) == 4 and set(agg["n_seeds"]) == {1}
    nce = agg[agg["sampler"] == "nce"].set_index("setting")
    assert nce.loc["", "mean"] == 75.0 and nce.loc["temperature=0.5", "mean"] == 25.0
    assert set(agg["dataset"]) == {"digits:dddddddd"}
    paired = paired_comparisons(long_table(scan), scan.samples)
    assert sorted(zip(paired["setting"], paired["mean_diff"])) == [("", 25.0), ("temperature=0.5", 0.0)]
    written = write_suite_tables(tmp_path, "knn", plot=False)
    table = pd.read_csv(written[0], keep_default_na=False)
    assert {"dataset", "setting", "deterministic"} <= set(table.columns)
    assert sorted(table["setting"]) == ["", "", "temperature=0.5", "temperature=0.5"]
    # each setting ranks its own two models (ranks 1 + 2 or 1.5 + 1.5), not four models together
    assert table.groupby("setting")["rank"].sum().tolist() == [3.0, 3.0]


def test_a_deterministic_evaluation_over_seeds_is_reported_once(tmp_path):
    nce, ring = [100.0, 0.0, 100.0, 100.0, 0.0], [100.0, 100.0, 100.0, 100.0, 0.0]
    for seed in range(3):
        _store_knn_cell(tmp_path, f"n{seed}", "nce", nce, seed=seed)
        _store_knn_cell(tmp_path, f"r{seed}", "ring", ring, seed=seed)
    scan = scan_suite(tmp_path, "knn")
    agg = aggregate(long_table(scan)).set_index("sampler")
    single = Metric.from_samples(nce)
    assert agg.loc["nce", "deterministic"] and agg.loc["nce", "n_seeds"] == 3
    assert (agg.loc["nce", "mean"], agg.loc["nce", "n"]) == (60.0, 5)
    assert agg.loc["nce", "ci95"] == pytest.approx(single.ci95) and agg.loc["nce", "ci95"] > 0
    paired = paired_comparisons(long_table(scan), scan.samples)
    assert len(paired) == 1, paired
    row = paired.iloc[0]
    assert row["seed"] == "0,1,2" and "deterministic" in row["test"]
    assert row["mean_diff"] == 20.0 and np.isfinite(row["p_ttest"])
    md = (tmp_path / "knn.md")
    write_suite_tables(tmp_path, "knn", plot=False)
    assert "†" in md.read_text() and "deterministic evaluation" in md.read_text()


def test_an_unreadable_result_is_named_like_a_corrupt_one(tmp_path):
    _store_cell(tmp_path, "good", "nce", "t", [1.0, 2.0])
    folder = ResultStore(tmp_path, "s").cell("dir").path
    (folder / "result.json").mkdir(parents=True)  # a directory where the result should be
    scan = scan_suite(tmp_path, "s")
    assert len(scan.rows) == 1 and len(scan.corrupt) == 1
    assert "dir/result.json" in scan.corrupt[0] and "cannot be read" in scan.corrupt[0]


def test_twins_stored_as_means_only_are_named_under_the_table_not_dropped_silently(tmp_path):
    for seed in range(2):
        for sampler, values, scalar in (("nce", [60.0, 70.0, 80.0], 30.0), ("ring", [65.0, 70.0, 90.0], 31.0)):
            _store_cell(tmp_path, f"{sampler}{seed}", sampler, "t", values, seed=seed)
            path = ResultStore(tmp_path, "s").cell(f"{sampler}{seed}").path / "result.json"
            result = json.loads(path.read_text())
            result["metrics"]["ap_small"] = Metric.scalar(scalar).to_json()  # a mean without its samples
            path.write_text(json.dumps(result))
    scan = scan_suite(tmp_path, "s")
    paired = paired_comparisons(long_table(scan), scan.samples)
    assert set(paired["metric"]) == {"acc"}
    assert paired.attrs["unpaired"] == {"ap_small": 2}  # one twin pair per seed
    write_suite_tables(tmp_path, "s", plot=False)
    notes = (tmp_path / "s.md").read_text().split("## Not tabulated")[1]
    assert "`ap_small` (2)" in notes and "acc" not in notes
