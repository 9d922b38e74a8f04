"""The meta_dataset suite: up-front checks, and end to end through bench.run's local executor."""

from __future__ import annotations

import json

import pytest
from md_fixtures import write_bilevel_source, write_encoder, write_flat_source

from bench.run import main as bench_run
from bench.suite import InputError
from bench.suites.meta_dataset import MetaDatasetSuite


def test_check_rejects_bad_inputs_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    suite = MetaDatasetSuite()
    encoder = write_encoder(tmp_path / "enc.pt")
    options = dict(suite.options)
    with pytest.raises(InputError, match="nowhere: records folder does not exist"):
        suite.check(suite.parse_options(options | {"records": str(tmp_path / "nowhere")}), None, [encoder])
    records = tmp_path / "records"
    folder = write_flat_source(records, "dtd", split_counts=(0, 0, 5), images=(6, 6))
    suite.check(suite.parse_options(options | {"records": str(records)}), None, [encoder])  # fine
    with pytest.raises(InputError, match="meta_dataset option probes=.ncc,knn.: unknown knn"):
        suite.check(suite.parse_options(options | {"records": str(records), "probes": "ncc,knn"}), None, [encoder])
    bad_checkpoint = tmp_path / "bad.pt"
    bad_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: not a readable torch checkpoint"):
        suite.check(suite.parse_options(options | {"records": str(records)}), None, [bad_checkpoint])
    (folder / "3.tfrecords").write_bytes((folder / "3.tfrecords").read_bytes()[:-3])
    with pytest.raises(InputError, match=r"dtd/3.tfrecords: record 5 at byte \d+ is truncated"):
        suite.check(suite.parse_options(options | {"records": str(records)}), None, [encoder])
    (records / "mscoco").mkdir()
    with pytest.raises(InputError, match="mscoco/dataset_spec.json: no dataset_spec.json"):
        suite.check(suite.parse_options(options | {"records": str(records)}), None, [encoder])
    with pytest.raises(InputError, match="no source folder"):
        suite.check(suite.parse_options(options | {"records": str(records), "sources": "fungi"}), None, [encoder])


def test_tasks_name_sources_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    records = tmp_path / "records"
    write_flat_source(records, "traffic_sign", split_counts=(0, 0, 6), images=(4, 4))
    write_bilevel_source(records, write_files=False)
    write_flat_source(records, "aircraft", split_counts=(6, 0, 0), images=(4, 4))  # no TEST classes
    suite = MetaDatasetSuite()
    tasks = suite.tasks(suite.parse_options(dict(suite.options) | {"records": str(records), "shots": "variable,5w1s"}), None)
    assert [t.name for t in tasks] == ["omniglot", "omniglot/5w1s", "traffic_sign", "traffic_sign/5w1s"]
    with pytest.raises(InputError, match="aircraft: cannot evaluate source aircraft: its TEST split has 0 classes"):
        suite.tasks(suite.parse_options(dict(suite.options) | {"records": str(records), "sources": "aircraft"}), None)


@pytest.mark.slow
def test_suite_end_to_end_on_the_embedded_source_through_the_local_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs share two cores
    nce = write_encoder(tmp_path / "nce.pt", seed=0, sampler="nce")
    ring = write_encoder(tmp_path / "ring.pt", seed=1, sampler="ring")
    results = tmp_path / "results"
    args = ["--suite", "meta_dataset", "--executor", "local", "--checkpoints", f"{nce},{ring}",
            "--results", str(results), "--no-progress", "episodes=40"]
    assert bench_run(args) == 0
    stored = [json.loads(p.read_text()) for p in sorted((results / "meta_dataset" / "cells").glob("*/result.json"))]
    assert len(stored) == 2
    ids = None
    for result in stored:
        assert result["task"]["name"] == "digits"
        info = result["info"]
        assert info["image_size"] == 32 and "pretraining size" in info["image_size_rule"]
        assert info["mean_way"] == 5.0 and info["episodes"] == 40
        for probe in ("acc/ncc", "acc/logreg"):
            metric = result["metrics"][probe]
            assert metric["n"] == 40 and 20.0 < metric["mean"] <= 100.0  # chance is 20%
            assert ids is None or metric["sample_ids"] == ids  # the very same episodes for both encoders
            ids = metric["sample_ids"]
    # the leaderboard pairs the Ring encoder with its NCE twin episode by episode
    assert (results / "meta_dataset.csv").is_file()
    # a second run on the same folder keeps both cells (episodes and features are reused)
    assert bench_run(args + ["--no-leaderboard"]) == 0
    assert len(list((results / "meta_dataset" / "cells").glob("*/result.json"))) == 2


@pytest.mark.slow
def test_episodic_omniglot_and_linear_mode_on_real_format_records(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    records = tmp_path / "records"
    write_bilevel_source(records, alphabets=((5,), (), (5, 6)), images=20)
    encoder = write_encoder(tmp_path / "enc.pt", image_size=20)
    results = tmp_path / "results"
    common = ["--suite", "meta_dataset", "--executor", "debug", "--checkpoints", str(encoder), "--results", str(results),
              "--no-progress", "--no-leaderboard", f"records={records}", "image_size=24"]
    assert bench_run(common + ["episodes=12", "shots=variable,5w1s"]) == 0
    assert bench_run(common + ["mode=linear"]) == 0
    stored = {json.loads(p.read_text())["task"]["name"]: json.loads(p.read_text())
              for p in (results / "meta_dataset" / "cells").glob("*/result.json")}
    assert sorted(stored) == ["omniglot", "omniglot/5w1s", "omniglot/linear"]
    variable, fixed, linear = stored["omniglot"], stored["omniglot/5w1s"], stored["omniglot/linear"]
    assert variable["info"]["image_size"] == 24 and "set by the user" in variable["info"]["image_size_rule"]
    assert 5 <= variable["info"]["mean_way"] <= 6 and variable["info"]["mean_query"] >= 50  # q = 10 per class
    assert fixed["info"]["mean_way"] == 5 and fixed["info"]["mean_support"] == 5 and fixed["info"]["mean_query"] == 75
    for result in (variable, fixed):
        for probe in ("acc/ncc", "acc/logreg"):
            assert result["metrics"][probe]["n"] == 12 and result["metrics"][probe]["mean"] > 60  # colour-coded classes
    # linear mode: every class of the source (train and test alphabets), 80/20 per class
    assert linear["info"]["classes"] == 16 and linear["info"]["test_images"] == 16 * 4
    # 100 epochs of 1 SGD step on a random encoder's raw features: learning, well above the 6.25% chance
    assert linear["metrics"]["acc/linear"]["n"] == 64 and linear["metrics"]["acc/linear"]["mean"] > 25


def test_image_size_rule():
    from transfer.meta_dataset.evaluate import resolve_image_size

    assert resolve_image_size("auto", 224, embedded=False)[0] == 224
    assert resolve_image_size("auto", 126, embedded=True)[0] == 126
    assert resolve_image_size("auto", 32, embedded=True)[0] == 32  # digits: the encoder's own size
    size, rule = resolve_image_size("auto", 32, embedded=False)
    assert size == 84 and "Meta-Dataset's default" in rule
    assert resolve_image_size("126", 32, embedded=False) == (126, "image_size=126 (set by the user)")


def test_meta_dataset_suite_feeds_a_cmc_encoder_its_views(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from cmc_encoders import MEAN, STD, expected_features, write_cmc_encoder, write_old_cmc_encoder

    from bench.suite import Cell
    from transfer.meta_dataset.episodes import EpisodeSet
    from transfer.meta_dataset.evaluate import image_batches
    from transfer.meta_dataset.spec import load_spec

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    records = tmp_path / "records"
    write_flat_source(records, "dtd", split_counts=(0, 0, 5), images=(6, 6))
    suite = MetaDatasetSuite()
    options = dict(suite.options) | {"records": str(records), "episodes": 3, "probes": "ncc", "image_size": "8",
                                     "cmc_features": "ab"}
    path = write_cmc_encoder(tmp_path / "cmc.pt")
    with pytest.raises(InputError, match="a CMC encoder file without metadata"):
        suite.check(suite.parse_options(options), None, [write_old_cmc_encoder(tmp_path / "old.pt")])
    suite.check(suite.parse_options(options), None, [path])
    shared = tmp_path / "shared"
    suite.prepare(suite.parse_options(options), None, shared)
    [task] = suite.tasks(suite.parse_options(options), None)
    output = suite.run(Cell("meta_dataset", task, path, 0, options, None, shared, suite.parse_options(options)),
                       tmp_path / "cell")
    assert (output.info["input_view"], output.info["cmc_features"]) == ("lab_ab", "ab")
    [features] = (tmp_path / "cache" / "meta_dataset" / "features").glob("*.npy")
    [episodes] = (shared / "episodes").glob("*.json")
    used = EpisodeSet.load(episodes).used_images()
    images = torch.cat(list(image_batches(load_spec(records / "dtd"), used, 8, MEAN, STD, 64)))
    assert torch.allclose(torch.from_numpy(np.load(features)), expected_features(images, "ab"), atol=1e-4)
