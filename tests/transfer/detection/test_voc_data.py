"""The VOC reader and its checks: the embedded VOCdevkit, and each kind of bad input named precisely."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from transfer.detection.voc_data import (
    VOC_CLASSES,
    VocDataError,
    check_voc_root,
    parse_annotation,
    read_split,
    voc_splits,
)
from transfer.detection.voc_embedded import DIGIT_CLASSES, build_embedded_voc, embedded_classes

YEARS = ["2007", "2012"]


@pytest.fixture(scope="module")
def built_voc(tmp_path_factory) -> Path:
    return build_embedded_voc(tmp_path_factory.mktemp("voc") / "digits", voc2007_trainval=6, voc2012_trainval=6,
                              voc2007_test=12)


@pytest.fixture
def voc(built_voc, tmp_path) -> Path:
    """A private copy each test may break."""
    return Path(shutil.copytree(built_voc, tmp_path / "digits"))


def first_annotation(root: Path, year: str = "2007") -> Path:
    return sorted((root / "VOCdevkit" / f"VOC{year}" / "Annotations").glob("*.xml"))[0]


def test_embedded_set_is_a_real_vocdevkit(built_voc):
    classes = embedded_classes(built_voc)
    assert classes == DIGIT_CLASSES == VOC_CLASSES[:10]
    summaries = check_voc_root(built_voc, YEARS, classes)
    assert set(summaries) == {"voc_2007_trainval", "voc_2012_trainval", "voc_2007_test"}
    assert summaries["voc_2007_test"].num_images == 12
    assert sum(s.num_difficult for s in summaries.values()) > 0  # faint digits are marked difficult
    assert all(s.num_objects >= 2 * s.num_images for s in summaries.values())
    train, test = voc_splits(built_voc, YEARS)
    ids = [{i.image_id for i in read_split(split, classes)} for split in [*train, test]]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2])
    # the XML is what VOC tools parse: pose, truncated and difficult on every object
    import xml.etree.ElementTree as ET

    obj = ET.parse(first_annotation(built_voc)).getroot().find("object")
    assert {child.tag for child in obj} >= {"name", "pose", "truncated", "difficult", "bndbox"}


def test_training_boxes_are_continuous_as_detectron2_loads_them(built_voc):
    _, test = voc_splits(built_voc, YEARS)
    obj = read_split(test, DIGIT_CLASSES)[0].objects[0]
    xmin, ymin, xmax, ymax = obj.box
    assert obj.training_box == (xmin - 1, ymin - 1, xmax, ymax)


def test_missing_jpeg_is_named(voc):
    jpeg = sorted((voc / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[2]
    jpeg.unlink()
    with pytest.raises(VocDataError, match=rf"{jpeg.name}: JPEG missing \(listed in .*VOC2012/ImageSets/Main/trainval.txt\)"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)


def test_missing_annotation_is_named(voc):
    xml = first_annotation(voc)
    xml.unlink()
    with pytest.raises(VocDataError, match=rf"{xml}: annotation file missing"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)


def test_malformed_xml_is_named(voc):
    xml = first_annotation(voc)
    xml.write_text(xml.read_text().replace("</annotation>", ""))
    with pytest.raises(VocDataError, match=rf"{xml}: malformed XML"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)


def test_a_box_with_a_word_for_a_coordinate_is_named(voc):
    xml = first_annotation(voc)
    text = xml.read_text()
    start = text.index("<xmin>") + len("<xmin>")
    xml.write_text(text[:start] + "left" + text[text.index("</xmin>"):])
    with pytest.raises(VocDataError, match=r"object 0 \(\w+\) <bndbox> <xmin>left</xmin> is not a number"):
        parse_annotation(xml)


def test_class_outside_the_voc_classes_is_named(voc):
    xml = first_annotation(voc, "2012")
    text = xml.read_text()
    name = text[text.index("<name>") + 6 : text.index("</name>")]
    xml.write_text(text.replace(f"<name>{name}</name>", "<name>giraffe</name>", 1))
    with pytest.raises(VocDataError, match=rf"{xml.name}: object 0 class 'giraffe' is not one of the VOC classes"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)
    # a real VOC class the embedded set does not use is outside the evaluated classes too
    xml.write_text(text.replace(f"<name>{name}</name>", "<name>person</name>", 1))
    with pytest.raises(VocDataError, match=r"class 'person' is not one of"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)


def _set_box(xml: Path, **values: int) -> None:
    import xml.etree.ElementTree as ET

    tree = ET.parse(xml)
    box = tree.getroot().find("object").find("bndbox")
    for tag, value in values.items():
        box.find(tag).text = str(value)
    tree.write(xml)


@pytest.mark.parametrize(("values", "message"), [
    ({"xmax": 97}, r"box \(xmin \d+, ymin \d+, xmax 97, ymax \d+\) is outside the 96 x 96 image"),
    ({"xmin": 0}, r"box \(xmin 0, .*\) is outside the 96 x 96 image \(VOC boxes are 1-based"),
    ({"ymin": 50, "ymax": 49}, r"box \(.*ymin 50, .*ymax 49\) has zero area"),
])
def test_box_outside_the_image_or_without_area_is_named(voc, values, message):
    xml = first_annotation(voc)
    _set_box(xml, **values)
    with pytest.raises(VocDataError, match=rf"{xml.name}: object 0 \(\w+\) {message}"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)


def test_difficult_must_be_zero_or_one(voc):
    xml = first_annotation(voc)
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>yes</difficult>", 1))
    with pytest.raises(VocDataError, match=r"<difficult>yes</difficult>: expected 0 or 1"):
        parse_annotation(xml)


def test_empty_and_missing_image_sets_are_named(voc):
    image_set = voc / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    image_set.write_text("\n\n")
    with pytest.raises(VocDataError, match=rf"{image_set}: image set is empty"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)
    image_set.unlink()
    with pytest.raises(VocDataError, match=rf"{image_set}: image set missing \(voc_2007_test needs ImageSets/Main/test.txt\)"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)


def test_voc2012_missing_when_07_plus_12_is_asked(voc):
    shutil.rmtree(voc / "VOCdevkit" / "VOC2012")
    with pytest.raises(VocDataError, match=r"no VOC2012 folder .*training on VOC07\+12 needs VOC2012 \(train only on 2007 with train_years=2007\)"):
        check_voc_root(voc, YEARS, DIGIT_CLASSES)
    assert set(check_voc_root(voc, ["2007"], DIGIT_CLASSES)) == {"voc_2007_trainval", "voc_2007_test"}


def test_a_class_without_test_objects_is_refused(voc):
    # nine classes evaluated on a test set with objects of ten: fine; ten classes plus one absent: undefined AP
    with pytest.raises(VocDataError, match=r"no non-difficult object of class\(es\) dog in voc_2007_test"):
        check_voc_root(voc, YEARS, (*DIGIT_CLASSES, "dog"))


def test_the_detectron2_layout_without_vocdevkit_is_read(voc, tmp_path):
    flat = tmp_path / "datasets"
    shutil.copytree(voc / "VOCdevkit", flat)
    train, test = voc_splits(flat, YEARS)
    assert [s.root for s in train] == [flat / "VOC2007", flat / "VOC2012"] and test.root == flat / "VOC2007"


def test_embedded_set_is_built_once(built_voc):
    marker = built_voc / "ringbench_embedded_voc.json"
    before = marker.stat().st_mtime_ns
    build_embedded_voc(built_voc, voc2007_trainval=6, voc2012_trainval=6, voc2007_test=12)
    assert marker.stat().st_mtime_ns == before
