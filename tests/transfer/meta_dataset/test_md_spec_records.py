"""The three dataset_spec.json schemas on real-format fixtures, the TFRecord reader and the checker."""

from __future__ import annotations

import json

import pytest
from md_fixtures import write_bilevel_source, write_flat_source, write_hierarchical_source

from transfer.meta_dataset import records
from transfer.meta_dataset.__main__ import main as check_main
from transfer.meta_dataset.checker import check_records, check_source
from transfer.meta_dataset.spec import SpecError, load_spec, spanned_leaves


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    write_flat_source(root)
    write_bilevel_source(root)
    write_hierarchical_source(root)
    return root


def test_flat_spec_split_ranges_and_counts(sources):
    spec = load_spec(sources / "aircraft")
    assert spec.schema == "DatasetSpecification"
    assert spec.path == sources / "aircraft"  # the stored "path" is replaced by the folder
    assert spec.classes("TRAIN") == [0, 1, 2] and spec.classes("VALID") == [3, 4]
    assert spec.classes("TEST") == list(range(5, 11))
    assert spec.images_per_class[5] == 8 + 5 % 5
    assert spec.class_file(7).name == "7.tfrecords"


def test_bilevel_spec_alphabets_are_contiguous_by_split(sources):
    spec = load_spec(sources / "omniglot")
    # alphabets: train (5, 6) chars, valid (5), test (6, 5, 7)
    assert spec.split_superclasses == {"TRAIN": [0, 1], "VALID": [2], "TEST": [3, 4, 5]}
    assert spec.classes("TRAIN") == list(range(11)) and spec.classes("VALID") == list(range(11, 16))
    assert spec.classes("TEST") == list(range(16, 34))
    assert [spec.superclass_of[c] for c in (16, 21, 22, 26, 27, 33)] == [3, 3, 4, 4, 5, 5]


def test_hierarchical_spec_leaves_sorted_per_split(sources):
    spec = load_spec(sources / "ilsvrc_2012")
    assert spec.classes("TRAIN") == list(range(6)) and spec.classes("VALID") == []
    test_leaves = sorted(spec.leaf_class_id["TEST"], key=spec.leaf_class_id["TEST"].get)
    assert test_leaves == sorted(test_leaves) and len(test_leaves) == 9  # shared leaf counted once
    assert spec.classes("TEST") == list(range(6, 15))
    spans = spanned_leaves(spec.split_graphs["TEST"])
    assert len(spans["n0root"]) == 9 and len(spans["n1a1"]) == 5 and "n9shared" in spans["n2b"]


def test_spec_errors_name_file_and_key(tmp_path):
    folder = write_flat_source(tmp_path, "dtd", split_counts=(1, 1, 1), images=(3, 3))
    spec_path = folder / "dataset_spec.json"
    data = json.loads(spec_path.read_text())
    del data["images_per_class"]["2"]
    spec_path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"dtd/dataset_spec.json: images_per_class lacks class id\(s\) \[2\]"):
        load_spec(folder)
    data["__class__"] = "Nonsense"
    spec_path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="unknown __class__ 'Nonsense'"):
        load_spec(folder)
    spec_path.unlink()
    with pytest.raises(SpecError, match="no dataset_spec.json"):
        load_spec(folder)


def test_a_hierarchy_cycle_or_a_repeated_wn_id_is_a_spec_error_naming_file_and_id(tmp_path):
    folder = write_hierarchical_source(tmp_path, write_files=False)
    spec_path = folder / "dataset_spec.json"
    good = json.loads(spec_path.read_text())
    cyclic = json.loads(spec_path.read_text())
    for node in cyclic["split_subgraphs"]["TEST"]:
        if node["wn_id"] == "n1a1":  # n0root -> n1a -> n1a1 -> n0root
            node["children_ids"] = node["children_ids"] + ["n0root"]
    spec_path.write_text(json.dumps(cyclic))
    with pytest.raises(SpecError, match=r"ilsvrc_2012/dataset_spec.json: split_subgraphs\['TEST'\] has a cycle: "
                                        r"n0root -> n1a -> n1a1 -> n0root"):
        load_spec(folder)
    repeated = json.loads(json.dumps(good))
    nodes = repeated["split_subgraphs"]["TEST"]
    twin = next(i for i, node in enumerate(nodes) if node["wn_id"] == "n1a2_0")
    nodes.append(dict(nodes[twin], words="a second entry"))
    spec_path.write_text(json.dumps(repeated))
    with pytest.raises(SpecError, match=rf"ilsvrc_2012/dataset_spec.json: split_subgraphs\['TEST'\] lists wn_id "
                                        rf"n1a2_0 twice \(nodes {twin} and {len(nodes) - 1}\)"):
        load_spec(folder)
    spec_path.write_text(json.dumps(good))
    assert load_spec(folder).classes("TEST") == list(range(6, 15))


def test_reader_round_trip_and_crc(tmp_path):
    blobs = [b"first", b"second", b"third"]
    path = tmp_path / "0.tfrecords"
    assert records.write_records(path, blobs, 0) == 3
    assert records.read_records(path) == [(b, 0) for b in blobs]
    assert records.read_records(path, [2, 0]) == [(b"third", 0), (b"first", 0)]
    frames = records.scan_frames(path)
    assert len(frames) == 3 and frames[0][0] == 0
    assert all(b[0] == a[0] + 12 + a[1] + 4 for a, b in zip(frames, frames[1:]))  # records back to back
    assert frames[2][0] + 16 + frames[2][1] == path.stat().st_size
    data = bytearray(path.read_bytes())
    data[frames[1][0] + 12 + 3] ^= 0xFF  # flip a payload byte of record 1: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(records.RecordError, match=r"0.tfrecords: record 1 is unreadable \(corrupted record"):
        records.read_records(path)


def test_checker_passes_good_sources_and_prints_one_line_each(sources, capsys):
    reports = check_records(sources)
    assert [(r.name, r.ok) for r in reports] == [("aircraft", True), ("ilsvrc_2012", True), ("omniglot", True)]
    assert check_main(["check", "--records", str(sources)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(" ok " in line for line in lines)


def _copy_source(sources, tmp_path, name="aircraft"):
    import shutil

    target = tmp_path / "records" / name
    shutil.copytree(sources / name, target)
    return target


def test_checker_catches_each_bad_input(sources, tmp_path, capsys):
    with pytest.raises(SpecError, match="records folder does not exist"):
        check_records(tmp_path / "nowhere")
    folder = _copy_source(sources, tmp_path)
    # count disagreeing with the spec
    records.write_records(folder / "6.tfrecords", [b"x"] * 3, 6)
    with pytest.raises(SpecError, match=r"6.tfrecords: holds 3 records but .*images_per_class\[6\] = 9"):
        check_source(folder)
    # missing class file
    (folder / "6.tfrecords").unlink()
    with pytest.raises(SpecError, match=r"class 6 .*/6.tfrecords does not exist"):
        check_source(folder)
    folder = _copy_source(sources, tmp_path / "b")
    # truncated last record: the framing check names the record and byte offset
    path = folder / "7.tfrecords"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(records.RecordError, match=r"7.tfrecords: record 9 at byte \d+ is truncated"):
        check_source(folder, full=False)
    with pytest.raises(records.RecordError, match=r"7.tfrecords: record 9 is unreadable"):
        check_source(folder, full=True)
    folder = _copy_source(sources, tmp_path / "c")
    # an image that does not decode
    records.write_records(folder / "8.tfrecords", [b"not an image"] * 11, 8)
    with pytest.raises(records.RecordError, match=r"8.tfrecords record 0: image does not decode"):
        check_source(folder)
    # a label that is not the class id
    records.write_records(folder / "8.tfrecords", [b"x"] * 11, 3)
    with pytest.raises(records.RecordError, match=r"8.tfrecords: record 0 has label 3, expected the class id 8"):
        check_source(folder)
    # a source folder without a spec: the CLI prints its error line and fails
    (tmp_path / "c" / "records" / "traffic_sign").mkdir()
    assert check_main(["check", "--records", str(tmp_path / "c" / "records"), "--quick"]) == 1
    out = capsys.readouterr().out
    assert "traffic_sign  ERROR" in out and "no dataset_spec.json" in out
