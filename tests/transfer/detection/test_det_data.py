"""The embedded digits COCO set is valid COCO; bad COCO inputs give clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from transfer.detection.coco_data import (
    CocoDataError,
    CocoDetectionDataset,
    check_coco_json,
    check_coco_root,
    coco_layout,
)
from transfer.detection.embedded import KEYPOINT_NAMES, build_embedded_coco, trace_polygons
from transfer.detection.evaluate import evaluate_coco, ground_truth_as_results


def test_embedded_layout_and_checks(small_coco):
    summaries = check_coco_root(small_coco, ["instances", "keypoints"])
    train = summaries[("instances", "train")]
    assert train.num_images == 24 and train.images_without_annotations == 0
    assert 2 * 24 <= train.num_annotations <= 4 * 24
    assert [c["name"] for c in train.categories][:3] == ["zero", "one", "two"]
    keypoints = summaries[("keypoints", "val")]
    assert keypoints.keypoint_names == list(KEYPOINT_NAMES)
    assert keypoints.keypoint_flip_map == [("left_extreme", "right_extreme")]
    assert len(keypoints.keypoint_oks_sigmas) == 4
    # Keypoints are annotated per digit class, with the same box and category as the instance.
    assert [c["name"] for c in keypoints.categories] == [c["name"] for c in train.categories]
    instances = json.loads((small_coco / "annotations" / "instances_val2017.json").read_text())["annotations"]
    with_keypoints = json.loads((small_coco / "annotations" / "person_keypoints_val2017.json").read_text())["annotations"]
    assert [(a["id"], a["category_id"], a["bbox"]) for a in with_keypoints] == [(a["id"], a["category_id"], a["bbox"]) for a in instances]


def test_embedded_is_deterministic_and_rebuilt_only_on_change(tmp_path, small_coco):
    again = build_embedded_coco(tmp_path / "again", train_images=24, val_images=8)
    for name in ("instances_train2017.json", "person_keypoints_val2017.json"):
        assert (again / "annotations" / name).read_bytes() == (small_coco / "annotations" / name).read_bytes()
    stamp = (again / "annotations" / "instances_train2017.json").stat().st_mtime_ns
    build_embedded_coco(tmp_path / "again", train_images=24, val_images=8)
    assert (again / "annotations" / "instances_train2017.json").stat().st_mtime_ns == stamp


def test_pycocotools_loads_it_and_ground_truth_scores_ap_100(small_coco):
    from pycocotools.coco import COCO

    instances = small_coco / "annotations" / "instances_val2017.json"
    keypoints = small_coco / "annotations" / "person_keypoints_val2017.json"
    coco = COCO(str(instances))
    assert len(coco.getImgIds()) == 8 and len(coco.getCatIds()) == 10
    metrics = evaluate_coco(instances, ground_truth_as_results(instances, ["bbox", "segm"]))
    sigmas = json.loads(keypoints.read_text())["categories"][0]["keypoint_oks_sigmas"]
    metrics |= evaluate_coco(keypoints, ground_truth_as_results(keypoints, ["keypoints"]), sigmas)
    for name in ("bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP", "segm/AP75", "keypoints/AP", "keypoints/AP75"):
        assert metrics[name] == pytest.approx(100.0), name


def test_shifted_predictions_score_below_100(small_coco):
    instances = small_coco / "annotations" / "instances_val2017.json"
    results = ground_truth_as_results(instances, ["bbox"])
    for result in results["bbox"]:
        x, y, w, h = result["bbox"]
        result["bbox"] = [x + w / 2, y, w, h]  # IoU 1/3 with its ground truth
    metrics = evaluate_coco(instances, results)
    assert metrics["bbox/AP50"] == pytest.approx(0.0)
    assert evaluate_coco(instances, {"bbox": []})["bbox/AP"] == 0.0  # nothing detected: zero, not NaN


def test_masks_cover_the_digit_ink(small_coco):
    from PIL import Image

    dataset = CocoDetectionDataset(coco_layout(small_coco, ["instances"])[("instances", "train")], True, False, train=True)
    image, target = dataset[0]
    masks = target["masks"].numpy().astype(bool)
    assert masks.shape[1:] == image.shape[1:] and masks.shape[0] == len(target["boxes"]) >= 2
    from pretrain.data import DIGITS_BACKGROUND, DIGITS_STROKE

    rgb = np.asarray(Image.open(dataset.split.image_root / "000001.png").convert("RGB"), dtype=np.float64)
    # ink = position between the background and stroke colours, as the images are rendered
    direction = DIGITS_STROKE - DIGITS_BACKGROUND
    ink = ((rgb - DIGITS_BACKGROUND) @ direction) / (direction @ direction)
    inside = ink[masks.any(axis=0)].mean()
    outside = ink[~masks.any(axis=0)].mean()
    assert inside > 0.45 and outside < 0.15  # stroke-coloured pixels inside the polygons, background outside


def test_trace_polygons_of_a_ring_and_two_parts():
    cells = np.zeros((5, 6), dtype=bool)
    cells[0:3, 0:3] = True
    cells[4, 4:6] = True
    loops = sorted(trace_polygons(cells))
    assert loops == [[(0, 0), (3, 0), (3, 3), (0, 3)], [(4, 4), (6, 4), (6, 5), (4, 5)]]


def test_keypoint_flip_swaps_left_and_right(small_coco):
    split = coco_layout(small_coco, ["keypoints"])[("keypoints", "train")]
    plain = CocoDetectionDataset(split, False, True, train=True)
    flipping = CocoDetectionDataset(split, False, True, train=True, horizontal_flip=True)
    np.random.seed(3)
    for _ in range(20):  # some draw flips with p = 0.5
        image, target = flipping[0]
        original_image, original = plain[0]
        if not np.array_equal(image.numpy(), original_image.numpy()):
            break
    else:
        pytest.fail("no flip in 20 draws")
    width = image.shape[-1]
    left, right = KEYPOINT_NAMES.index("left_extreme"), KEYPOINT_NAMES.index("right_extreme")
    flipped_left = target["keypoints"][:, left, 0].numpy()
    assert np.array_equal(flipped_left, width - 1 - original["keypoints"][:, right, 0].numpy())
    assert np.allclose(target["boxes"][:, 0].numpy(), width - original["boxes"][:, 2].numpy())


def _copy_with(small_coco: Path, tmp_path: Path, name: str, edit) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(small_coco, root)
    path = root / "annotations" / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    ("json_name", "edit", "message"),
    [
        ("instances_train2017.json", lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0, 4.0]]),
         r"annotation 1: polygon 0 has 4 values; a polygon needs an even count of at least 6"),
        ("instances_train2017.json", lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]),
         r"polygon 0 has 7 values"),
        ("person_keypoints_val2017.json", lambda d: d["annotations"][1].update(keypoints=d["annotations"][1]["keypoints"][:-1]),
         r"annotation 2: keypoints must be 4 \(x, y, v\) triplets = 12 numbers, found 11"),
        ("person_keypoints_val2017.json", lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3),
         r"visibility must be 0, 1 or 2"),
        ("person_keypoints_val2017.json", lambda d: d["annotations"][0].update(num_keypoints=2),
         r"num_keypoints is 2 but 4 keypoints have v > 0"),
        ("instances_val2017.json", lambda d: d.update(annotations=[]),
         r"images without annotations: none of its 8 images has an annotation"),
        ("instances_val2017.json", lambda d: d.pop("annotations"), r"missing or non-list 'annotations'"),
        ("instances_val2017.json", lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]), r"non-positive width"),
        ("instances_val2017.json", lambda d: d["annotations"][0].update(image_id=999), r"image_id 999 is not among the images"),
        ("instances_val2017.json", lambda d: d["annotations"][0].pop("area"), r"area must be a non-negative number"),
        ("person_keypoints_val2017.json", lambda d: d["categories"][0].pop("keypoint_oks_sigmas"),
         r"4 keypoints but no 'keypoint_oks_sigmas'"),
    ],
)
def test_malformed_json_is_refused_naming_the_problem(small_coco, tmp_path, json_name, edit, message):
    root = _copy_with(small_coco, tmp_path, json_name, edit)
    with pytest.raises(CocoDataError, match=message) as error:
        check_coco_root(root, ["instances", "keypoints"])
    assert json_name in str(error.value)


def test_missing_files_are_named(small_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(small_coco, root)
    (root / "val2017" / "000003.png").unlink()
    with pytest.raises(CocoDataError, match=r"1 image files listed in instances_val2017.json are missing \(first: 000003.png\)"):
        check_coco_root(root, ["instances"])
    (root / "annotations" / "person_keypoints_train2017.json").unlink()
    with pytest.raises(CocoDataError, match=r"missing COCO 2017 files: .*person_keypoints_train2017.json"):
        coco_layout(root, ["keypoints"])
    with pytest.raises(CocoDataError, match="no such folder"):
        coco_layout(tmp_path / "absent", ["instances"])
    (root / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(CocoDataError, match="not valid JSON"):
        check_coco_json(root / "annotations" / "instances_val2017.json", root / "val2017")


def test_coco_subfolder_layout_is_accepted(small_coco, tmp_path):
    shutil.copytree(small_coco, tmp_path / "datasets" / "coco")
    layout = coco_layout(tmp_path / "datasets", ["instances"])
    assert layout[("instances", "val")].json_file == tmp_path / "datasets" / "coco" / "annotations" / "instances_val2017.json"
