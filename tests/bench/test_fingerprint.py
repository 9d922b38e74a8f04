"""A cell's identity includes the data it reads: a dataset fingerprint that ignores where the folder
lives and follows every change to what the numbers are computed from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.plan import build_plan
from bench.suite import InputError
from bench.suites import load_suite


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    import bench.fingerprint

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench.fingerprint, "_MEMORY", {})


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    from md_fixtures import write_encoder

    return write_encoder(tmp_path_factory.mktemp("enc") / "r18.pt")


def _ids(suite: str, results: Path, encoder: Path, data_root: Path | None = None, options=()) -> list[str]:
    plan = build_plan(suite, load_suite(suite), results_root=results, checkpoint_specs=[str(encoder)],
                      data_root=data_root, option_pairs=list(options))
    return [planned.cell_id for planned in plan.cells]


def test_coco_ids_follow_the_annotations_and_images_not_the_folder(tmp_path, encoder):
    from transfer.detection.embedded import build_embedded_coco

    first = build_embedded_coco(tmp_path / "a" / "coco", train_images=6, val_images=4)
    options = ["tasks=mask_rcnn", "engine=torchvision"]
    original = _ids("coco_det", tmp_path / "r", encoder, first, options)
    # a copy whose val annotations lost one image: other numbers, so another cell
    second = tmp_path / "b" / "coco"
    shutil.copytree(first, second)
    val = second / "annotations" / "instances_val2017.json"
    data = json.loads(val.read_text())
    dropped = data["images"].pop()["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != dropped]
    val.write_text(json.dumps(data))
    assert set(_ids("coco_det", tmp_path / "r", encoder, second, options)).isdisjoint(original)
    # an image file of other size (re-encoded) is another dataset too
    third = tmp_path / "c" / "coco"
    shutil.copytree(first, third)
    image = sorted((third / "val2017").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert set(_ids("coco_det", tmp_path / "r", encoder, third, options)).isdisjoint(original)
    # moved, or reached through a symlink: the same cells
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    first.rename(moved)
    assert _ids("coco_det", tmp_path / "r", encoder, moved, options) == original
    (tmp_path / "link").symlink_to(moved)
    assert _ids("coco_det", tmp_path / "r", encoder, tmp_path / "link", options) == original


def test_meta_dataset_ids_do_not_depend_on_a_relative_records_path(tmp_path, encoder, monkeypatch):
    from md_fixtures import write_flat_source

    write_flat_source(tmp_path / "a" / "records")
    write_flat_source(tmp_path / "b" / "records", images=(9, 12))  # same folder name, other data
    options = ["records=records", "episodes=4"]
    monkeypatch.chdir(tmp_path / "a")
    from_a = _ids("meta_dataset", tmp_path / "r", encoder, options=options)
    monkeypatch.chdir(tmp_path / "b")
    from_b = _ids("meta_dataset", tmp_path / "r", encoder, options=options)
    assert set(from_a).isdisjoint(from_b)
    monkeypatch.chdir(tmp_path)
    absolute = _ids("meta_dataset", tmp_path / "r", encoder, options=[f"records={tmp_path / 'a' / 'records'}", "episodes=4"])
    assert absolute == from_a
    given_as_data_root = _ids("meta_dataset", tmp_path / "r", encoder, data_root=Path("a/records"), options=["episodes=4"])
    assert given_as_data_root == from_a


def test_linear_ids_change_with_the_batches_not_with_the_folder(tmp_path, encoder):
    from linear_layouts import write_cifar10

    write_cifar10(tmp_path / "a")
    write_cifar10(tmp_path / "b", n_test=30)
    options = ["datasets=cifar10", "protocol=fast"]
    first = _ids("linear", tmp_path / "r", encoder, tmp_path / "a", options)
    assert set(_ids("linear", tmp_path / "r", encoder, tmp_path / "b", options)).isdisjoint(first)
    os.rename(tmp_path / "a", tmp_path / "moved")
    assert _ids("linear", tmp_path / "r", encoder, tmp_path / "moved", options) == first


def test_pretrain_ids_follow_the_recipes_dataset_not_its_folder(tmp_path):
    from linear_layouts import write_cifar10

    write_cifar10(tmp_path / "a")
    write_cifar10(tmp_path / "b", n_test=30)

    def ids(root: Path) -> list[str]:
        plan = build_plan("pretrain", load_suite("pretrain"), results_root=tmp_path / "r", checkpoint_specs=[],
                          data_root=root, option_pairs=["recipes=simclr_nce_cifar10"])
        return [planned.cell_id for planned in plan.cells]

    first = ids(tmp_path / "a")
    assert len(first) == 1 and set(ids(tmp_path / "b")).isdisjoint(first)
    os.rename(tmp_path / "a", tmp_path / "moved")
    assert ids(tmp_path / "moved") == first
    with pytest.raises(InputError, match="simclr_nce_cifar10 reads cifar10: give its folder with --data-root"):
        ids(None)


@pytest.mark.parametrize("suite", ["knn", "estimators", "selftest"])
def test_suites_that_read_no_data_refuse_a_data_root(tmp_path, suite):
    with pytest.raises(InputError, match=f"suite {suite} reads no dataset folder.*drop --data-root"):
        build_plan(suite, load_suite(suite), results_root=tmp_path / "r", data_root=tmp_path)


def test_image_folder_fingerprint_is_cached_and_refreshed_by_a_new_file(tmp_path, monkeypatch):
    from linear_layouts import write_imagefolder

    import bench.fingerprint as fingerprint

    root = write_imagefolder(tmp_path / "data")
    folder = root if (root / "train").is_dir() else next(p for p in root.rglob("train")).parent
    first = fingerprint.image_folder_fingerprint("imagenet", folder)
    assert first.files > 0 and first.label == f"imagenet:{first.sha256[:8]}"
    monkeypatch.setattr(fingerprint, "_MEMORY", {})
    listed = []
    real = fingerprint._files_with_sizes
    monkeypatch.setattr(fingerprint, "_files_with_sizes", lambda path: listed.append(path) or real(path))
    assert fingerprint.image_folder_fingerprint("imagenet", folder) == first and listed == []  # from the cache file
    class_dir = sorted(p for p in (folder / "train").iterdir() if p.is_dir())[0]
    shutil.copy(next(class_dir.iterdir()), class_dir / "extra.png")
    changed = fingerprint.image_folder_fingerprint("imagenet", folder)
    assert listed and changed.sha256 != first.sha256 and changed.files == first.files + 1
