"""Identity a user's tools cannot forge: a checkpoint or a data file rewritten in place with its size and
mtime put back (what `cp -p`, `rsync -t` and `tar x` do) is other work, never the old results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.plan import build_plan, resolve_checkpoint
from bench.suite import InputError
from bench.suites import load_suite
from ringbench_testing.bench import make_encoder, plan_and_run, run_bench


def _swap_keeping_size_and_mtime(target: Path, source: Path) -> None:
    """Overwrite `target` with `source`'s bytes (same size), then put `target`'s times back."""
    before = target.stat()
    assert source.stat().st_size == before.st_size
    shutil.copyfile(source, target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_checkpoint_swapped_in_place_with_its_mtime_restored_is_not_kept_done(tmp_path, job_env, bench_env):
    encoder = make_encoder(tmp_path / "enc" / "model.pt", "nce", seed=0)
    other = make_encoder(tmp_path / "other" / "model.pt", "nce", seed=1)  # same metadata, other weights
    results = tmp_path / "results"
    _, summary = plan_and_run("knn", results, "debug", checkpoints=[encoder])
    assert summary.states == {"done": 1}
    args = ["--suite", "knn", "--checkpoints", str(encoder), "--results", str(results), "--dry-run"]
    unchanged = run_bench(args, bench_env)
    assert unchanged.returncode == 0 and "keep   done" in unchanged.stdout, unchanged.stdout + unchanged.stderr

    _swap_keeping_size_and_mtime(encoder, other)
    swapped = run_bench(args, bench_env)
    assert swapped.returncode == 0, swapped.stderr
    assert "keep" not in swapped.stdout and "submit pending" in swapped.stdout, swapped.stdout


def test_the_checkpoint_info_cache_is_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    encoder = make_encoder(tmp_path / "a.pt", "nce", seed=0)
    other = make_encoder(tmp_path / "b.pt", "nce", seed=1)
    first = resolve_checkpoint(encoder)
    assert first.sha256 == resolve_checkpoint(encoder).sha256  # the cached entry
    _swap_keeping_size_and_mtime(encoder, other)
    assert resolve_checkpoint(encoder).sha256 == resolve_checkpoint(other).sha256 != first.sha256


@pytest.fixture
def private_fingerprints(tmp_path, monkeypatch):
    import bench.fingerprint

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench.fingerprint, "_MEMORY", {})


def _coco_plan(tmp_path: Path, coco: Path, encoder: Path, *extra: str):
    return build_plan("coco_det", load_suite("coco_det"), results_root=tmp_path / "r", checkpoint_specs=[str(encoder)],
                      data_root=coco, option_pairs=["tasks=mask_rcnn", "engine=torchvision", *extra])


def test_content_fingerprints_see_a_same_size_edit_that_sizes_do_not(tmp_path, private_fingerprints, monkeypatch):
    import bench.fingerprint
    from transfer.detection.embedded import build_embedded_coco

    encoder = make_encoder(tmp_path / "enc.pt", "nce", seed=0)
    coco = build_embedded_coco(tmp_path / "coco", train_images=6, val_images=4)
    sizes = _coco_plan(tmp_path, coco, encoder)
    content = _coco_plan(tmp_path, coco, encoder, "fingerprint=content")
    assert sizes.cells[0].dataset["mode"] == "sizes" and content.cells[0].dataset["mode"] == "content"
    assert sizes.cells[0].cell_id != content.cells[0].cell_id  # the modes never share a fingerprint

    image = sorted((coco / "val2017").iterdir())[0]
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    stat = image.stat()
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(bench.fingerprint, "_MEMORY", {})
    assert _coco_plan(tmp_path, coco, encoder).cells[0].cell_id == sizes.cells[0].cell_id  # what sizes cannot see
    assert _coco_plan(tmp_path, coco, encoder, "fingerprint=content").cells[0].cell_id != content.cells[0].cell_id


def test_a_bad_fingerprint_mode_names_the_valid_ones(tmp_path, private_fingerprints):
    with pytest.raises(InputError, match="fingerprint='bytes': expected one of sizes .*, content"):
        build_plan("selftest", load_suite("selftest"), results_root=tmp_path / "r", option_pairs=["fingerprint=bytes"])


def test_the_leaderboard_says_which_fingerprint_mode_each_dataset_got(tmp_path, job_env):
    from bench.leaderboard import write_suite_tables

    results = tmp_path / "results"
    encoder = make_encoder(tmp_path / "enc.pt", "nce", seed=0)
    plan, summary = plan_and_run("knn", results, "debug", checkpoints=[encoder])
    assert summary.states == {"done": 1}
    # a result stored before fingerprints recorded their mode counts as sizes
    result_path = plan.store.cell(plan.cells[0].cell_id).result_path
    result = json.loads(result_path.read_text())
    assert result["dataset"]["mode"] == "content"  # the embedded digits are hashed whole
    write_suite_tables(results, "knn", plot=False)
    label = result["dataset"]["label"]
    assert f"Dataset fingerprints: `{label}` content (sha256 of every file)" in (results / "knn.md").read_text()
    del result["dataset"]["mode"]
    result_path.chmod(0o644)
    result_path.write_text(json.dumps(result))
    write_suite_tables(results, "knn", plot=False)
    assert f"`{label}` sizes (file names and sizes" in (results / "knn.md").read_text()
