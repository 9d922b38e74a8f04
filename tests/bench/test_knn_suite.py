"""The knn suite end to end through the command line: local and debug executors give the same table."""

from __future__ import annotations

import pandas as pd
import pytest

from ringbench_testing.bench import run_bench


@pytest.mark.slow
def test_local_and_debug_executors_give_the_same_table(tmp_path, encoder_pair, bench_env):
    tables = {}
    for executor in ("local", "debug"):
        results = tmp_path / executor
        out = run_bench(["--suite", "knn", "--checkpoints", ",".join(map(str, encoder_pair)), "--executor", executor,
                         "--results", str(results), "--no-progress", "ks=5,50"], bench_env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        for suffix in (".csv", ".md", ".png", "_paired.csv"):
            assert (results / f"knn{suffix}").stat().st_size > 0
        tables[executor] = pd.read_csv(results / "knn.csv")
    local, debug = tables["local"], tables["debug"]
    assert len(local) == 4  # 2 checkpoints x 1 task x 2 metrics
    columns = ["model", "task", "metric", "mean", "std", "n", "ci95", "rank", "avg_rank"]
    pd.testing.assert_frame_equal(local[columns], debug[columns])
    # digits are 10 classes: even random ResNet features are far above chance with a kNN vote
    assert (local["mean"] > 30).all() and (local["mean"] <= 100).all()
    assert set(local["n"]) == {360}  # the held-out 20% of 1,797 digits
    paired = pd.read_csv(tmp_path / "local" / "knn_paired.csv")
    assert set(paired["metric"]) == {"acc/k5", "acc/k50"} and set(paired["n"]) == {360}
    assert paired["p_ttest"].between(0, 1).all() and paired["p_sign"].between(0, 1).all()
    # a second plan finds every cell done
    from bench.plan import build_plan
    from bench.suites import load_suite

    plan = build_plan("knn", load_suite("knn"), results_root=tmp_path / "local", option_pairs=["ks=5,50"],
                      checkpoint_specs=[str(p) for p in encoder_pair])
    assert [plan.store.cell(p.cell_id).state().state for p in plan.cells] == ["done", "done"]
    # the embedded digits have a fingerprint too: in the cell id, result.json and the table
    stored = plan.store.cell(plan.cells[0].cell_id).read_result()["dataset"]
    assert stored["name"] == "digits" and len(stored["sha256"]) == 64 and stored == plan.cells[0].dataset
    assert set(local["dataset"]) == {f"digits:{stored['sha256'][:8]}"}


def _cached_test_features(shared_dir):
    import json

    import numpy as np

    for parts_file in sorted((shared_dir / "features").glob("*.json")):
        if json.loads(parts_file.read_text())["split"] == "test":
            return np.load(parts_file.with_suffix(".npy"))
    raise AssertionError("no cached test-split features")


def test_knn_suite_feeds_a_cmc_encoder_the_views_it_was_trained_on(tmp_path, monkeypatch):
    import torch
    from cmc_encoders import MEAN, STD, expected_features, write_cmc_encoder, write_old_cmc_encoder

    from bench.suite import Cell, InputError
    from bench.suites.knn import KnnSuite
    from pretrain.data import eval_transform, open_dataset

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    suite = KnnSuite()
    path = write_cmc_encoder(tmp_path / "cmc.pt")
    old = write_old_cmc_encoder(tmp_path / "old.pt")
    with pytest.raises(InputError, match="old.pt: a CMC encoder file without metadata"):
        suite.check(suite.parse_options({}), None, [old])
    suite.check(suite.parse_options({"cmc_features": "l", "force_rgb_input": "true"}), None, [old])
    with pytest.raises(InputError, match="knn option cmc_features='lab': expected one of l, ab, concat"):
        suite.parse_options({"cmc_features": "lab"})

    test = open_dataset("digits", split="test", image_size=8)
    transform = eval_transform(8, MEAN, STD)
    images = torch.stack([transform(test.image(i)) for i in range(len(test))])
    for which, force in (("concat", False), ("l", True)):
        options = dict(suite.options) | {"ks": [5], "cmc_features": which, "force_rgb_input": force}
        settings = suite.parse_options(options)
        shared = tmp_path / f"shared-{which}-{force}"
        cell = Cell("knn", suite.tasks(settings, None)[0], path, 0, options, None, shared, settings)
        output = suite.run(cell, tmp_path)
        expected = expected_features(images, which, rgb=force)
        assert torch.allclose(torch.from_numpy(_cached_test_features(shared)), expected, atol=1e-4), (which, force)
        view = "rgb" if force else {"concat": "lightness+lab_ab", "l": "lightness"}[which]
        assert (output.info["input_view"], output.info["cmc_features"]) == (view, which)
    assert not torch.allclose(expected_features(images, "l"), expected_features(images, rgb=True), atol=1e-2)
