"""Intervals and tests of the leaderboards: Student's t over few runs, one verdict per paired
comparison, Holm, no interval for one value, pairing by the sampler registry, and the committed
example tables under docs/results/ checked against those rules."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.figures import NOT_SIGNIFICANT, verdict_colours
from bench.intervals import (
    EPISODE_CONVENTION,
    NO_INTERVAL,
    half_width_from_population_std,
    holm,
    paired_t_p,
    sign_test_p,
    t_half_width,
)
from bench.leaderboard import write_suite_tables
from bench.rederive import rederive_paired, rederive_suite_tables
from bench.store import SCHEMA_VERSION, ResultStore, publish_json_once
from bench.suite import Metric
from bench.suites import load_suite

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results"


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_intervals_over_a_few_runs_are_scipys_student_t(n):
    values = np.random.default_rng(n).normal(50.0, 4.0, n)
    low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert t_half_width(values.std(ddof=1), n) == pytest.approx((high - low) / 2)
    # the leaderboard stores population std (ddof = 0): the same interval from it
    assert half_width_from_population_std(values.std(), n) == pytest.approx((high - low) / 2)
    assert Metric.from_samples(values).ci95 == pytest.approx((high - low) / 2)
    # and wider than the normal quantile's by the factor the issue tabulates (6.5x at n = 2)
    assert t_half_width(values.std(ddof=1), n) / (1.96 * values.std(ddof=1) / np.sqrt(n)) == pytest.approx(
        stats.t.ppf(0.975, n - 1) / 1.96)


def test_episode_convention_is_the_normal_quantile_over_population_std():
    values = np.random.default_rng(0).normal(80.0, 5.0, 600)
    assert half_width_from_population_std(values.std(), 600, EPISODE_CONVENTION) == pytest.approx(
        1.96 * values.std() / np.sqrt(600))
    assert load_suite("meta_dataset").sample_interval == EPISODE_CONVENTION
    assert load_suite("coco_det").sample_interval != EPISODE_CONVENTION
    with pytest.raises(ValueError, match="unknown interval 'wide'"):
        half_width_from_population_std(1.0, 3, "wide")


def test_one_value_has_no_interval_and_no_test():
    assert np.isnan(t_half_width(0.0, 1)) and np.isnan(half_width_from_population_std(0.0, 1))
    assert np.isnan(paired_t_p(1.0, 0.0, 1))
    single = Metric.from_samples([3.0])
    assert np.isnan(single.ci95) and single.to_json()["ci95"] is None


def test_a_paired_interval_excludes_zero_exactly_when_its_p_is_below_005():
    rng = np.random.default_rng(1)
    n = rng.integers(2, 40, 5000)
    sd = rng.uniform(0.1, 3.0, n.size)
    # means spread around the boundary |mean| = t * sd / sqrt(n)
    mean = rng.choice([-1, 1], n.size) * t_half_width(sd, n) * rng.uniform(0.5, 1.5, n.size)
    excludes = np.abs(mean) > t_half_width(sd, n)
    p = paired_t_p(mean, sd, n)
    assert (excludes == (p < 0.05)).all() and excludes.any() and not excludes.all()
    samples = rng.normal(0.4, 1.0, 7)
    assert paired_t_p(samples.mean(), samples.std(ddof=1), 7) == pytest.approx(stats.ttest_1samp(samples, 0).pvalue)


def test_sign_test_and_holm_match_their_definitions():
    k, m = np.array([0, 3, 7, 12, 5]), np.array([0, 10, 9, 20, 5])
    expected = [1.0] + [stats.binomtest(int(a), int(b)).pvalue for a, b in zip(k[1:], m[1:])]
    np.testing.assert_allclose(sign_test_p(k, m), expected, rtol=1e-12)
    # Holm by hand: sorted 0.01, 0.02, 0.04 -> 3 * 0.01, 2 * 0.02, max(0.04, 0.04); NaN outside the family
    np.testing.assert_allclose(holm([0.04, 0.01, np.nan, 0.02]), [0.04, 0.03, np.nan, 0.04])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_the_coco_det_row_that_looked_significant_becomes_grey():
    # Ring - NCE segm/AP over 3 fine-tuning seeds as written under the normal quantile: +1.09 +- 0.75
    sd = 0.75 * np.sqrt(3) / 1.96
    old = pd.DataFrame([{"suite": "coco_det", "task": "mask", "metric": "segm/AP", "dataset": "d", "setting": "",
                         "seed": "all", "ring_model": "r", "nce_model": "n", "method": "simclr",
                         "pretrain_dataset": "digits", "epochs": 20, "ckpt_seed": 0, "arch": "resnet18", "n": 3,
                         "ring_mean": 22.05, "nce_mean": 20.96, "mean_diff": 1.09, "ci95_diff": 0.75,
                         "p_ttest": 0.10, "p_sign": 0.25, "test": "over seeds; paired t-test; exact sign test"}])
    row = rederive_paired(old).iloc[0]
    assert row["ci95_diff"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / np.sqrt(3)) == pytest.approx(1.64, abs=0.01)
    assert row["p_ttest"] == pytest.approx(0.104, abs=0.002) and row["mean_diff"] - row["ci95_diff"] < 0
    assert verdict_colours([row["mean_diff"]], [row["p_holm"]])[0] == NOT_SIGNIFICANT
    assert (row["sampler"], row["baseline"], row["sampler_model"]) == ("ring", "nce", "r")


def _store(root, sampler, seed, samples, ckpt_seed=0):
    cid = f"{sampler}-p{ckpt_seed}-s{seed}"
    checkpoint = {"path": f"/x/{cid}.pt", "sha256": f"{sampler}{ckpt_seed}".ljust(64, "0"), "method": "simclr",
                  "sampler": sampler, "sampler_params": {}, "arch": "resnet18", "pretrain_dataset": "digits",
                  "epochs": 20, "seed": ckpt_seed}
    metric = Metric.from_samples(samples, [f"img{i}" for i in range(len(samples))]).to_json()
    result = {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": "selftest", "protocol_version": "1",
              "task": {"name": "digits", "params": {}}, "seed": seed, "metrics": {"acc/top1": metric},
              "checkpoint": checkpoint, "code_version": "test", "engine": "e"}
    folder = ResultStore(root, "selftest").cell(cid).path
    folder.mkdir(parents=True)
    assert publish_json_once(folder / "result.json", result)


def test_every_hard_negative_sampler_is_paired_with_its_nce_twin_and_every_row_has_one_verdict(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.uniform(40, 90, 30)
    shift = {"nce": 0.0, "ring": 3.0, "dcl": -2.0, "ball": 0.3}
    for sampler, delta in shift.items():
        for ckpt_seed in (0, 1):
            for seed in (0, 1, 2):
                _store(tmp_path, sampler, seed, (base + delta + rng.normal(0, 2, 30)).tolist(), ckpt_seed)
    _store(tmp_path, "mystery", 0, base.tolist())  # not in the registry: paired with nothing
    write_suite_tables(tmp_path, "selftest", plot=False)
    paired = pd.read_csv(tmp_path / "selftest_paired.csv")
    assert sorted(paired["sampler"].unique()) == ["ball", "dcl", "ring"] and set(paired["baseline"]) == {"nce"}
    for sampler in ("ball", "dcl", "ring"):  # per seed, over seeds, over pretraining seeds: the same rows each
        mine = paired[paired["sampler"] == sampler]
        assert len(mine) == len(paired[paired["sampler"] == "ring"]) == 2 * 3 + 2 + 4
        one = mine[(mine["seed"].astype(str) == "0") & (mine["ckpt_seed"].astype(str) == "0")].iloc[0]
        assert one["mean_diff"] == pytest.approx(one["sampler_mean"] - one["baseline_mean"])
    excludes = (paired["mean_diff"] - paired["ci95_diff"] > 0) | (paired["mean_diff"] + paired["ci95_diff"] < 0)
    assert (excludes == (paired["p_ttest"] < 0.05)).all()
    np.testing.assert_allclose(paired["p_holm"], holm(paired["p_ttest"]))
    dcl = paired[(paired["sampler"] == "dcl") & (paired["seed"].astype(str) == "all")]
    assert (dcl["mean_diff"] < 0).all()
    markdown = (tmp_path / "selftest.md").read_text()
    assert "dcl − nce" in markdown and "p (Holm)" in markdown and "mystery" not in markdown.split("## Hard")[1]


def test_a_single_value_reads_no_interval_in_the_table(tmp_path):
    _store(tmp_path, "nce", 0, [70.0])
    write_suite_tables(tmp_path, "selftest", plot=False)
    ranked = pd.read_csv(tmp_path / "selftest.csv")
    assert ranked["ci95"].isna().all() and (ranked["interval"] == NO_INTERVAL).all()
    assert "70.00 (n = 1: no interval)" in (tmp_path / "selftest.md").read_text()


# ------------------------------------------------------------------ the committed example tables
COMMITTED = sorted(p for p in RESULTS.glob("*.csv") if not p.stem.endswith(("_paired", "_curves")))


def _committed(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_leaderboard_interval_follows_the_rule(path):
    ranked = _committed(path)
    suite = path.stem
    several = ranked["n_seeds"] > 1
    if "deterministic" in ranked:
        several &= ~ranked["deterministic"].astype(bool)
    std, n = ranked["std"].to_numpy(float), ranked["n"].to_numpy(float)
    expected = np.where(several, half_width_from_population_std(std, n),
                        half_width_from_population_std(std, n, load_suite(suite).sample_interval))
    np.testing.assert_allclose(ranked["ci95"], expected, rtol=1e-9)
    t_rows = several | (load_suite(suite).sample_interval != EPISODE_CONVENTION)
    sd = std * np.sqrt(n / np.maximum(n - 1, 1))
    np.testing.assert_allclose(ranked.loc[t_rows, "ci95"], (stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n))[t_rows])


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*_paired.csv")), ids=lambda p: p.name)
def test_every_committed_paired_row_has_one_verdict_and_a_holm_column(path):
    paired = _committed(path)
    assert {"p_holm", "sampler", "baseline"} <= set(paired.columns)
    if paired.empty:
        return
    n = paired["n"].to_numpy(float)
    sd = paired["ci95_diff"].to_numpy(float) / stats.t.ppf(0.975, n - 1) * np.sqrt(n)
    # the p-value is that of the t-test whose interval is printed
    np.testing.assert_allclose(paired["p_ttest"], 2 * stats.t.sf(np.abs(paired["mean_diff"]) / (sd / np.sqrt(n)), n - 1),
                               rtol=1e-6)
    low, high = paired["mean_diff"] - paired["ci95_diff"], paired["mean_diff"] + paired["ci95_diff"]
    assert (((low > 0) | (high < 0)) == (paired["p_ttest"] < 0.05)).all()
    np.testing.assert_allclose(paired["p_holm"], holm(paired["p_ttest"]))


def test_re_deriving_the_committed_tables_changes_nothing(tmp_path):
    for path in RESULTS.glob("*"):
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    for path in COMMITTED:
        rederive_suite_tables(tmp_path, path.stem, plot=False)
    for path in RESULTS.glob("*.csv"):
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name
    for path in RESULTS.glob("*.md"):
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name


# ------------------------------------------------------------------ structure
def _bench_imports(module: str) -> set[str]:
    tree = ast.parse((REPO / "bench" / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_figures_and_their_workers_never_import_the_leaderboard():
    for module in ("figures", "figure_workers", "intervals"):
        assert "bench.leaderboard" not in _bench_imports(module), module


def test_leaderboard_and_figures_compare_no_sampler_names():
    from pretrain.samplers import SAMPLER_CLASSES

    for module in ("leaderboard", "figures"):
        tree = ast.parse((REPO / "bench" / f"{module}.py").read_text())
        named = [node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and node.value in SAMPLER_CLASSES]
        assert named == [], (module, named)
