"""transfer.detection.voc_eval against hand-computed VOC APs, and against Detectron2's evaluator when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transfer.detection.voc_data import VocImage, VocObject
from transfer.detection.voc_eval import VocDetection, average_precision, evaluate_voc

CLASSES = ("cat", "dog")


def image(image_id, *objects):
    return VocImage(image_id, Path(f"{image_id}.jpg"), 100, 100, tuple(objects))


def gt(name, box, difficult=False):
    return VocObject(name, tuple(float(v) for v in box), difficult)


def det(image_id, cls, score, voc_box):
    """A detection whose written (1-based) box is `voc_box`: the model's continuous box has xmin, ymin - 1."""
    xmin, ymin, xmax, ymax = voc_box
    return VocDetection(image_id, cls, score, (xmin - 1.0, ymin - 1.0, xmax, ymax))


def test_eleven_point_ap_by_hand():
    # recall 0.5 at precision 1, then recall 1.0 at precision 2/3: levels 0..0.5 (6) at 1, 0.6..1.0 (5) at 2/3
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    # the area under the envelope: 0.5 * 1 + 0.5 * 2/3
    assert average_precision(recall, precision, use_07_metric=False) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ranked_true_and_false_positives_by_hand():
    images = [image("a", gt("cat", (11, 11, 50, 50))), image("b", gt("cat", (21, 21, 60, 60)), gt("dog", (1, 1, 30, 30)))]
    detections = [
        det("a", 0, 0.9, (11, 11, 50, 50)),  # TP
        det("b", 0, 0.8, (70, 70, 90, 90)),  # FP (no overlap)
        det("a", 0, 0.7, (11, 11, 50, 50)),  # FP: duplicate of a matched object
        det("b", 0, 0.6, (21, 21, 60, 60)),  # TP
        det("b", 1, 0.5, (1, 1, 30, 30)),  # dog TP
    ]
    result = evaluate_voc(images, CLASSES, detections)
    # cat: TP FP FP TP -> recall .5 .5 .5 1, precision 1 .5 1/3 .5: levels 0-0.5 at 1, 0.6-1 at 0.5
    cat = (6 * 1.0 + 5 * 0.5) / 11 * 100
    assert result.per_class["AP50"] == pytest.approx({"cat": cat, "dog": 100.0})
    assert result.metrics["AP50"] == pytest.approx((cat + 100.0) / 2)
    # exact boxes match at every threshold, so AP = AP50 = AP75
    assert result.metrics["AP"] == pytest.approx(result.metrics["AP50"])
    assert result.metrics["AP75"] == pytest.approx(result.metrics["AP50"])


def test_difficult_objects_count_neither_way():
    images = [image("a", gt("cat", (11, 11, 50, 50)), gt("cat", (61, 61, 90, 90), difficult=True))]
    # the top detection hits the difficult cat: ignored, so the easy cat's detection is first and precision stays 1
    detections = [det("a", 0, 0.9, (61, 61, 90, 90)), det("a", 0, 0.8, (11, 11, 50, 50))]
    result = evaluate_voc(images, ("cat",), detections)
    assert result.metrics["AP50"] == pytest.approx(100.0)
    # missing only the difficult one costs no recall either
    assert evaluate_voc(images, ("cat",), detections[1:]).metrics["AP50"] == pytest.approx(100.0)
    # treated as a normal object it would be a miss of half the cats
    plain = [image("a", gt("cat", (11, 11, 50, 50)), gt("cat", (61, 61, 90, 90)))]
    assert evaluate_voc(plain, ("cat",), detections[1:]).metrics["AP50"] < 100.0


def test_iou_uses_inclusive_pixels_and_a_strict_threshold():
    # ground truth 1..10 (10 px); detection 1..10 x 1..5 (5 px high): IoU (10*5)/(10*10) = 0.5 exactly, not > 0.5
    images = [image("a", gt("cat", (1, 1, 10, 10)))]
    assert evaluate_voc(images, ("cat",), [det("a", 0, 0.9, (1, 1, 10, 5))]).metrics["AP50"] == 0.0
    # 1..10 x 1..6: IoU 0.6 > 0.5 (with exclusive pixels it would be 9*5 / 81 = 0.56; both pass at .5, not at .6)
    result = evaluate_voc(images, ("cat",), [det("a", 0, 0.9, (1, 1, 10, 6))])
    assert result.metrics["AP50"] == pytest.approx(100.0)
    assert result.per_class["AP"]["cat"] == pytest.approx(100.0 * 2 / 10)  # passes at 0.50 and 0.55 only


def test_scores_are_rounded_as_written_before_sorting():
    # 0.9004 and 0.9001 both become 0.900; the argsort of equal scores keeps the file order, so the FP written
    # first ranks first (sorting the raw scores would put the TP first and give AP 100)
    images = [image("a", gt("cat", (11, 11, 50, 50)))]
    detections = [det("a", 0, 0.9001, (70, 70, 90, 90)), det("a", 0, 0.9004, (11, 11, 50, 50))]
    assert evaluate_voc(images, ("cat",), detections).metrics["AP50"] == pytest.approx(100 * (6 * 0.5 + 5 * 0.5) / 11)


def test_no_detections_score_zero_and_unknown_images_are_refused():
    images = [image("a", gt("cat", (11, 11, 50, 50)))]
    assert evaluate_voc(images, ("cat",), []).metrics == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with pytest.raises(ValueError, match="image 'z'"):
        evaluate_voc(images, ("cat",), [det("z", 0, 0.5, (1, 1, 5, 5))])


@pytest.mark.detectron2
def test_matches_detectron2_pascal_voc_evaluator(tmp_path):
    """Same detections through Detectron2's PascalVOCDetectionEvaluator (2007 metric) and ours: within 1e-6 AP."""
    pytest.importorskip("detectron2")
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    from transfer.detection.voc_data import read_split, voc_splits
    from transfer.detection.voc_embedded import build_embedded_voc, embedded_classes

    root = build_embedded_voc(tmp_path / "voc", voc2007_trainval=2, voc2012_trainval=2, voc2007_test=24)
    classes = embedded_classes(root)
    _, test = voc_splits(root, ["2007"])
    images = read_split(test, classes)
    name = "ringbench_voc_eval_test"
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(thing_classes=list(classes), dirname=str(test.root), year=2007, split="test")
    rng = np.random.default_rng(0)
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    detections = []
    for item in images:
        boxes, scores, labels = [], [], []
        for obj in item.objects:  # jittered hits (some below IoU .5), wrong classes and random boxes
            for _ in range(2):
                x0, y0, x1, y1 = obj.training_box
                jitter = rng.normal(0, 3, 4)
                boxes.append([x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3]])
                labels.append(classes.index(obj.name) if rng.random() < 0.8 else int(rng.integers(len(classes))))
                scores.append(float(rng.random()))
        for _ in range(3):
            x0, y0 = rng.uniform(0, 70, 2)
            boxes.append([x0, y0, x0 + rng.uniform(5, 25), y0 + rng.uniform(5, 25)])
            labels.append(int(rng.integers(len(classes))))
            scores.append(float(rng.random()))
        instances = Instances((item.height, item.width))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        instances.pred_classes = torch.tensor(labels)
        evaluator.process([{"image_id": item.image_id}], [{"instances": instances}])
        # the same float32 values Detectron2 formats
        detections += [VocDetection(item.image_id, label, float(score), tuple(float(v) for v in box))
                       for box, score, label in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), labels)]
    theirs = evaluator.evaluate()["bbox"]
    ours = evaluate_voc(images, classes, detections, use_07_metric=True).metrics
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-6)
