"""First use of the embedded pair: user input is checked before any training, a dry run never trains,
a real run says what it trains and how long that takes, and pretraining seeds are an axis."""

from __future__ import annotations

import io

import pytest

from ringbench_testing.bench import run_bench

TINY = {"epochs": 1, "image_size": 16, "batch_size": 16, "max_steps_per_epoch": 1, "knn_every": 0}


def _encoder_files(cache):
    return sorted(cache.glob("encoders/**/encoder.pt"))


def test_a_broken_records_folder_fails_before_the_embedded_pair_is_trained(tmp_path, bench_env):
    records = tmp_path / "md_records"
    records.mkdir()  # exists, but holds no source
    (records / "omniglot").mkdir()
    # the old order trained the pair (minutes on 2 cores) before reading the records: the timeout catches it
    out = run_bench(["--suite", "meta_dataset", "--records", str(records), "--results", str(tmp_path / "results"),
                     "--executor", "local"], bench_env, timeout=90)
    assert out.returncode == 2, out.stderr
    assert str(records) in out.stderr and "Traceback" not in out.stderr
    assert "training the embedded" not in out.stderr
    assert _encoder_files(tmp_path / "cache") == []


def test_a_missing_records_folder_is_named_as_records(tmp_path, bench_env):
    missing = tmp_path / "nowhere"
    out = run_bench(["--suite", "meta_dataset", "--records", str(missing), "--results", str(tmp_path / "r"),
                     "--dry-run"], bench_env, timeout=90)
    assert out.returncode == 2
    assert f"--records {missing}: no such folder" in out.stderr
    out = run_bench(["--suite", "meta_dataset", "--data-root", str(missing), "--records", str(missing),
                     "--results", str(tmp_path / "r"), "--dry-run"], bench_env, timeout=90)
    assert out.returncode == 2 and "give one of them" in out.stderr


def test_a_dry_run_with_an_empty_cache_trains_nothing_and_lists_the_cells_after_training(tmp_path, bench_env):
    results = tmp_path / "results"
    out = run_bench(["--suite", "knn", "--results", str(results), "--executor", "local", "--dry-run",
                     "--pretrain-seeds", "0,1"], bench_env, timeout=90)
    assert out.returncode == 0, out.stderr
    assert _encoder_files(tmp_path / "cache") == []
    assert "embedded encoders not trained yet (4)" in out.stdout
    from pretrain.embedded import epochs_per_encoder

    assert out.stdout.count(f"submit after training the embedded encoders (4 encoder(s), {epochs_per_encoder()} "
                            "epoch(s) each) ") == 4
    for seed in (0, 1):
        for sampler in ("nce", "ring"):
            assert f"simclr/{sampler} pretraining seed {seed} digits seed=0" in out.stdout
    assert "dry run: nothing submitted" in out.stdout
    assert not (results / "knn" / "cells").exists()


def test_pretrain_seeds_are_refused_where_they_do_not_apply(tmp_path, bench_env, encoder_pair):
    out = run_bench(["--suite", "knn", "--checkpoints", str(encoder_pair[0]), "--pretrain-seeds", "0,1",
                     "--results", str(tmp_path / "r"), "--dry-run"], bench_env, timeout=90)
    assert out.returncode == 2 and "--pretrain-seeds picks the embedded pair's pretraining seeds" in out.stderr
    out = run_bench(["--suite", "selftest", "--pretrain-seeds", "1", "--results", str(tmp_path / "r"), "--dry-run"],
                    bench_env, timeout=90)
    assert out.returncode == 2 and "--pretrain-seeds does not apply" in out.stderr


@pytest.mark.slow
def test_a_real_run_announces_the_training_then_plans_one_pair_per_pretraining_seed(tmp_path, monkeypatch):
    from bench.plan import build_plan
    from bench.suites import load_suite
    from pretrain import embedded
    from pretrain.checkpoint import load_encoder

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "EMBEDDED_OVERRIDES", dict(TINY, max_steps_per_epoch=5))
    monkeypatch.setenv("RINGBENCH_PROGRESS_INTERVAL", "0")  # a log line per step
    stream = io.StringIO()
    plan = build_plan("knn", load_suite("knn"), results_root=tmp_path / "results", pretrain_seeds=[0, 1],
                      stream=stream)
    said = stream.getvalue()
    announced = said.index("knn: training the embedded NCE and Ring encoders first")
    assert "4 encoder(s), 1 epoch(s) each" in said[announced:].splitlines()[0]
    # the estimate is timed here, from the steps after each training's first, before any training ends
    estimate = said.index("embedded encoders: about ")
    assert announced < estimate < said.index("embedded encoders: trained")
    assert "s per step over steps 2-4" in said[estimate:].splitlines()[0]
    # plain progress lines in a log: the encoder, its epoch and step, and the time left
    lines = [line for line in said.splitlines() if line.startswith("embedded encoders: ") and "step" in line
             and "/20 [" in line]
    assert lines and all("<" in line for line in lines)  # tqdm's elapsed<remaining
    assert any("nce (seed 0) epoch 1/1 step 5/5" in line for line in lines)
    assert lines[-1].split(":")[1].strip().startswith("20/20")
    assert len(plan.checkpoints) == 4 and not plan.untrained
    assert len(plan.cells) == 4 and all(p.cell_id for p in plan.cells)
    seen = [(load_encoder(p).metadata["seed"], load_encoder(p).metadata["sampler"]) for p in plan.checkpoints]
    assert seen == [(0, "nce"), (0, "ring"), (1, "nce"), (1, "ring")]
    assert [p.checkpoint["seed"] for p in plan.cells] == [0, 0, 1, 1]
    # a second plan trains nothing and keeps the same cells
    again = build_plan("knn", load_suite("knn"), results_root=tmp_path / "results", pretrain_seeds=[0, 1],
                       stream=io.StringIO())
    assert [p.cell_id for p in again.cells] == [p.cell_id for p in plan.cells]
