"""The estimator check: closed forms, the NCE bound, where CNCE (Ring) bounds and where it does not.

Sizes are small and seeds fixed; each property asserted here held on every one of 5 seeds at these
sizes (see the estimators note). Where the paper's claim does not hold, the test asserts what is
true and says so in its name.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench.suite import Cell, InputError
from bench.suites.estimators import EstimatorsSuite
from studies.estimators import task_name
from studies.estimators.study import (
    CRITICS,
    EstimatorSpec,
    GaussianPair,
    OptimalCritic,
    Setting,
    contrastive_estimate,
    estimate_batch,
    parse_estimator,
    plot_estimates,
    run_setting,
    summary_frame,
    tilted_estimate,
    train_critic,
)

NCE = EstimatorSpec("nce")
PAPER_RING = EstimatorSpec("ring", w_out=0.1, w_in=0.1)  # released configs: ranks 1%-10%
WIDE_RING = EstimatorSpec("ring", w_out=1.0, w_in=0.1)  # annealing start: drop the nearest 10%
BALL = EstimatorSpec("ball", w_out=0.1)
ESTIMATORS = [NCE, PAPER_RING, WIDE_RING, BALL]
SIZES = dict(dim=20, num_batches=150, batch_size=16, pool_size=1024, seed=0)


@pytest.fixture(scope="module")
def optimal_runs():
    """Optimal critic at (true MI, K) = (2, 16), (2, 64), (6, 64), (10, 256): every estimator on shared batches."""
    torch.set_num_threads(1)
    return {(mi, k): run_setting(Setting("optimal", mi, k), ESTIMATORS, **SIZES).summary()
            for mi, k in ((2.0, 16), (2.0, 64), (6.0, 64), (10.0, 256))}


# --------------------------------------------------------------------------- closed forms


def test_mutual_information_round_trips_through_rho():
    pair = GaussianPair.from_mi(6.0, 20)
    assert pair.mi == pytest.approx(6.0, abs=1e-12)
    assert GaussianPair(dim=1, rho=0.0).mi == 0.0
    with pytest.raises(ValueError, match="rho must lie in"):
        GaussianPair(dim=3, rho=1.0)


def test_optimal_critic_is_the_log_density_ratio_of_the_gaussians():
    pair = GaussianPair(dim=3, rho=0.7)
    generator = torch.Generator().manual_seed(0)
    x, y = (t.double() for t in pair.sample(8, generator))
    joint_cov = np.block([[np.eye(3), 0.7 * np.eye(3)], [0.7 * np.eye(3), np.eye(3)]])
    joint = stats.multivariate_normal(mean=np.zeros(6), cov=joint_cov)
    marginal = stats.multivariate_normal(mean=np.zeros(3), cov=np.eye(3))
    expected = joint.logpdf(np.hstack([x.numpy(), y.numpy()])) - marginal.logpdf(x.numpy()) - marginal.logpdf(y.numpy())
    critic = OptimalCritic(pair)
    np.testing.assert_allclose(critic.pair_scores(x, y).numpy(), expected, atol=1e-10)
    # the (anchor x pool) matrix form agrees with the pairwise form everywhere
    matrix = critic.scores(x, y)
    pairwise = critic.pair_scores(x.repeat_interleave(8, 0), y.repeat(8, 1)).reshape(8, 8)
    torch.testing.assert_close(matrix, pairwise, atol=1e-10, rtol=0)


def test_closed_form_mi_matches_monte_carlo_and_the_ratio_integrates_to_one():
    generator = torch.Generator().manual_seed(1)
    pair = GaussianPair.from_mi(3.0, 5)
    critic = OptimalCritic(pair)
    x, y = (t.double() for t in pair.sample(200_000, generator))
    scores = critic.pair_scores(x, y)
    standard_error = float(scores.std()) / math.sqrt(scores.numel())
    # E_p(x,y)[f*] = I(X;Y)
    assert abs(float(scores.mean()) - pair.mi) < 4 * standard_error
    # E_p(y)[exp f*(x, y)] = 1 for a fixed x (shuffled pairs are draws from p(x)p(y))
    weak = GaussianPair.from_mi(0.5, 5)
    x, y = (t.double() for t in weak.sample(200_000, generator))
    ratio = OptimalCritic(weak).pair_scores(x, y.roll(1, 0)).exp()
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(ratio.std()) / math.sqrt(ratio.numel())


# --------------------------------------------------------------------------- estimator formulas


def test_contrastive_estimate_is_log_k_minus_cross_entropy():
    positive = torch.tensor([2.0, -1.0])
    negatives = torch.tensor([[0.0, 1.0, -3.0], [5.0, 0.5, 0.0]])
    logits = torch.cat([positive[:, None], negatives], 1)
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.long), reduction="none")
    torch.testing.assert_close(contrastive_estimate(positive, negatives), math.log(4) - loss)
    # a dominant positive saturates at log K, never above
    assert float(contrastive_estimate(torch.tensor([1e4]), torch.zeros(1, 3))) == pytest.approx(math.log(4))


def test_estimates_agree_with_the_pretraining_losses():
    """mean(I_hat) = log K - loss for pretrain's InfoNCE and HCL (tau+ = 0; a tiny temperature disables
    DCL's clamp, which has no meaning for an unscaled critic)."""
    from pretrain.losses import hcl_loss, info_nce_loss

    generator = torch.Generator().manual_seed(5)
    positive, negatives = 3 * torch.randn(32, generator=generator), 3 * torch.randn(32, 15, generator=generator)
    log_k = math.log(16)
    assert float(contrastive_estimate(positive, negatives).mean()) == pytest.approx(
        log_k - float(info_nce_loss(positive, negatives)), abs=1e-5)
    assert float(tilted_estimate(positive, negatives, 1.0).mean()) == pytest.approx(
        log_k - float(hcl_loss(positive, negatives, beta=1.0, tau_plus=0.0, temperature=1e-3)), abs=1e-4)


def test_hcl_with_zero_beta_is_nce_and_larger_beta_is_more_pessimistic():
    generator = torch.Generator().manual_seed(2)
    positive, negatives = torch.randn(64, generator=generator), torch.randn(64, 15, generator=generator)
    torch.testing.assert_close(tilted_estimate(positive, negatives, 0.0), contrastive_estimate(positive, negatives))
    assert bool((tilted_estimate(positive, negatives, 1.0) <= contrastive_estimate(positive, negatives) + 1e-6).all())


def test_estimator_names_round_trip_and_non_estimators_say_why():
    for spec in (NCE, PAPER_RING, WIDE_RING, BALL, EstimatorSpec("hcl", beta=0.5)):
        assert parse_estimator(spec.name) == spec
    with pytest.raises(ValueError, match="no meaningful MI estimate"):
        EstimatorSpec("mochi")
    with pytest.raises(ValueError, match="no meaningful MI estimate"):
        EstimatorSpec("dcl")
    with pytest.raises(ValueError, match="ring takes 2 value"):
        parse_estimator("ring[0.1]")


def test_nce_never_exceeds_log_k_and_stays_below_the_true_mi(optimal_runs):
    generator = torch.Generator().manual_seed(3)
    for mi, k in ((2.0, 64), (10.0, 256)):
        pair = GaussianPair.from_mi(mi, 20)
        x, y = pair.sample(256, generator)
        per_anchor, _ = estimate_batch(OptimalCritic(pair), x, y, pair.sample_marginal(1024, generator), k, [NCE],
                                       generator)
        assert float(per_anchor["nce"].max()) <= math.log(k) + 1e-5
        run = optimal_runs[(mi, k)]["nce"]
        assert run["mean"] <= math.log(k) + 1e-5
        assert run["mean"] + 3 * run["std"] / math.sqrt(run["n"]) < mi


# --------------------------------------------------------------------------- the paper's claims


def test_paper_band_ring_is_below_nce_where_the_estimates_are_not_saturated(optimal_runs):
    """CNCE <= NCE <= I with the released [1%, 10%] band at true MI 2 and 6 (more bias than NCE)."""
    for key in ((2.0, 16), (2.0, 64), (6.0, 64)):
        ring, nce = optimal_runs[key][PAPER_RING.name], optimal_runs[key]["nce"]
        assert ring["mean"] < nce["mean"] - 0.1, key


def test_band_condition_holds_at_low_mi_and_fails_at_high_mi(optimal_runs):
    """The sufficient condition of the bound (band scores >= log E_p exp f, here >= 0) is checked per anchor."""
    assert optimal_runs[(2.0, 64)][PAPER_RING.name]["band_condition"] > 0.9
    assert optimal_runs[(6.0, 64)][PAPER_RING.name]["band_condition"] < 0.05
    assert optimal_runs[(2.0, 64)][WIDE_RING.name]["band_condition"] == 0.0


def test_ball_is_always_below_nce(optimal_runs):
    """An upper set of scores dominates p's scores stochastically, so the ball bounds NCE at every MI."""
    for key, run in optimal_runs.items():
        assert run[BALL.name]["mean"] < run["nce"]["mean"], key


def test_saturated_paper_ring_sits_above_nce_yet_below_log_k(optimal_runs):
    """Exception to CNCE <= NCE: at true MI 10, K 256 dropping the top 1% ranks lifts the ring above NCE.

    Both stay below log K << I, so the ring is still a lower bound on the true MI there.
    """
    ring, nce = optimal_runs[(10.0, 256)][PAPER_RING.name], optimal_runs[(10.0, 256)]["nce"]
    assert nce["mean"] < ring["mean"] <= math.log(256) + 1e-5


def test_wide_ring_band_overestimates_the_true_mi(optimal_runs):
    """Not a bound: the [10%, 100%] band drops the hardest negatives that carry most of E_p exp f*."""
    for key in ((2.0, 64),):
        wide = optimal_runs[key][WIDE_RING.name]
        assert wide["mean"] - 3 * wide["std"] / math.sqrt(wide["n"]) > key[0]


def test_variance_paper_ring_std_exceeds_nce_at_low_and_mid_mi(optimal_runs):
    """Exception to 'lower variance': at true MI 2 and 6 the [1%, 10%] ring's estimate varies MORE than NCE's.

    Hard negatives dominate the partition, so the estimate follows the positive score f(x, y+) with
    slope ~1, while NCE's partition contains e^f(x,y+) and damps it.
    """
    for key in ((2.0, 16), (6.0, 64)):
        assert optimal_runs[key][PAPER_RING.name]["std"] > 1.1 * optimal_runs[key]["nce"]["std"], key


def test_variance_paper_ring_log_partition_varies_less_than_nce_at_low_mi(optimal_runs):
    """What is lower at low MI: the spread of the log-partition term (the band cuts e^f's heavy tail)."""
    for key in ((2.0, 16), (2.0, 64)):
        ring, nce = optimal_runs[key][PAPER_RING.name], optimal_runs[key]["nce"]
        assert ring["log_partition_std"] < 0.7 * nce["log_partition_std"], key


def test_variance_paper_ring_std_below_nce_when_saturated(optimal_runs):
    """Where the claim holds for the estimate itself: true MI 10 >> log K (K = 256)."""
    assert optimal_runs[(10.0, 256)][PAPER_RING.name]["std"] < optimal_runs[(10.0, 256)]["nce"]["std"]


def test_variance_wide_ring_std_below_nce_everywhere(optimal_runs):
    for key, run in optimal_runs.items():
        assert run[WIDE_RING.name]["std"] < run["nce"]["std"], key


# --------------------------------------------------------------------------- learned critic


def test_nce_trained_critic_learns_and_stays_a_lower_bound():
    torch.set_num_threads(1)
    pair = GaussianPair.from_mi(4.0, 10)
    generator = torch.Generator().manual_seed(4)
    critic, history = train_critic(pair, NCE, 32, steps=150, batch_size=64, pool_size=256, generator=generator)
    assert np.mean(history[-20:]) > np.mean(history[:20]) + 0.5
    result = run_setting(Setting("learned-nce", 4.0, 32), [NCE], dim=10, num_batches=20, batch_size=32,
                         pool_size=256, train_steps=150, train_pool_size=256, seed=0).summary()["nce"]
    assert 0.5 < result["mean"] < 4.0


# --------------------------------------------------------------------------- suite


def test_suite_constants_match_the_experiment():
    assert EstimatorsSuite.options["critics"] == list(CRITICS)  # the default sweep runs every critic
    assert task_name("optimal", 2.0, 64) == Setting("optimal", 2.0, 64).name == "optimal/mi=2/K=64"


def test_suite_lists_critic_x_mi_x_k_tasks():
    suite = EstimatorsSuite()
    options = dict(suite.options)
    tasks = suite.tasks(suite.parse_options(options), None)
    expected = len(options["mi"]) * (len(options["k"]) + 2 * len(options["learned_k"]))
    assert len(tasks) == expected == 25
    assert tasks[0].name == "optimal/mi=2/K=16" and tasks[0].params == {"critic": "optimal", "mi": 2.0, "k": 16}


@pytest.mark.parametrize("override, message", [
    ({"bands": ["0.1:1.5"]}, "bands='0.1:1.5': w_in must lie in \\[0, 1\\], got 1.5"),
    ({"train_band": "0:0.1"}, "train_band='0:0.1': ring band is empty"),
    ({"bands": ["wide"]}, "band 'wide' must be w_out:w_in"),
    ({"pool": 5, "k": [4], "learned_k": [4]}, "pool=5: the band w_out:w_in=0.1:0.1 keeps ranks \\[0, 0\\), which is empty"),
    ({"critics": ["perfect"]}, "unknown perfect; valid: a comma list of optimal, learned-nce, learned-ring"),
    ({"k": [1]}, "k='1': expected a comma list of numbers >= 2"),
    ({"mi": [0.0]}, "positive number of nats"),
    ({"batches": 1}, "batches='1': expected an integer >= 2"),
    ({"pool": 100, "bands": ["0.5:0.1"], "balls": [0.5]}, "pool=100: K=256 needs at least K-1=255 candidates"),
    ({"train_pool": 32}, "train_pool=32: K=64 needs at least K-1=63"),
])
def test_suite_rejects_bad_options_before_submission(override, message):
    suite = EstimatorsSuite()
    with pytest.raises(InputError, match=message):
        suite.parse_options({**suite.options, **override})


def test_suite_cell_reports_metrics_per_estimator_with_the_true_mi(tmp_path):
    suite = EstimatorsSuite()
    options = {**suite.options, "batches": 5, "batch_size": 8, "pool": 256, "bands": ["0.1:0.1"]}
    task = suite.tasks(suite.parse_options({**options, "critics": ["optimal"], "mi": [4.0], "k": [16]}), None)[0]
    cell = Cell(suite="estimators", task=task, checkpoint=None, seed=0, options=options, data_root=None,
                shared_dir=tmp_path, settings=suite.parse_options(options))
    output = suite.run(cell, tmp_path)
    for name in ("nce", "ring[0.1,0.1]", "ball[0.1]", "hcl[1]"):
        mi, bias = output.metrics[f"mi/{name}"], output.metrics[f"bias/{name}"]
        assert mi.n == 5 and mi.sample_ids == [f"batch{i}" for i in range(5)]
        assert bias.mean == pytest.approx(mi.mean - 4.0)
        assert f"log_partition/{name}" in output.metrics
    assert output.info["true_mi"] == pytest.approx(4.0) and output.info["K"] == 16
    summary = output.info["summary"]
    # the ring and the ball of the same w_out share their band's lowest rank, so the same anchors pass
    assert summary["ring[0.1,0.1]"]["band_condition"] == summary["ball[0.1]"]["band_condition"]
    assert 0.0 <= summary["ring[0.1,0.1]"]["band_condition"] <= 1.0


def test_plot_estimates_writes_a_figure(tmp_path):
    results = [run_setting(Setting("optimal", mi, 16), [NCE, PAPER_RING], dim=20, num_batches=3, batch_size=8,
                           pool_size=256) for mi in (1.0, 3.0)]
    frame = summary_frame(results)
    assert set(frame["estimator"]) == {"nce", "ring[0.1,0.1]"} and len(frame) == 4
    path = plot_estimates(frame, tmp_path / "estimators.png")
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="lacks columns"):
        plot_estimates(frame.drop(columns=["std"]), tmp_path / "x.png")


def test_bench_run_writes_the_leaderboard_table_and_the_estimate_plot(tmp_path, monkeypatch):
    import pandas as pd

    from bench.run import main

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    code = main(["--suite", "estimators", "--executor", "debug", "--results", str(results), "--no-progress",
                 "mi=1,3", "k=8", "learned_k=8", "critics=optimal,learned-nce", "batches=4", "batch_size=8",
                 "pool=128", "train_steps=5", "train_pool=64", "bands=0.2:0.1"])
    assert code == 0
    table = pd.read_csv(results / "estimators.csv")
    assert len(set(table["task"])) == 4
    nce = table[(table["task"] == "optimal/mi=3/K=8") & (table["metric"] == "mi/nce")]
    assert len(nce) == 1 and nce["n"].iloc[0] == 4 and nce["mean"].iloc[0] <= math.log(8) + 1e-5
    markdown = (results / "estimators.md").read_text()
    assert "| critic | K | true MI | nce | ring[0.2,0.1] | ball[0.1] | hcl[1] |" in markdown
    assert "| optimal | 8 | 3 |" in markdown and "| learned-nce | 8 | 1 |" in markdown
    assert (results / "estimators.png").stat().st_size > 10_000
