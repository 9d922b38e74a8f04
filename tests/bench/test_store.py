from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from bench.store import (
    SCHEMA_VERSION,
    CellFolder,
    CorruptResult,
    append_event,
    atomic_write_json,
    cell_id,
    publish_json_once,
    read_events,
    read_result,
)

BASE = dict(suite="knn", task_name="digits", params={"k": 20}, seed=0, protocol_version="1",
            checkpoint_sha256="ab" * 32, options={"ks": [20]})


def minimal_result(cid: str = "c1", mean: float = 1.0) -> dict:
    return {"schema_version": SCHEMA_VERSION, "cell_id": cid, "suite": "knn", "task": {"name": "t", "params": {}},
            "seed": 0, "metrics": {"acc": {"mean": mean}}, "checkpoint": None, "code_version": "x"}


def test_cell_id_is_stable_and_sensitive_to_every_part():
    first = cell_id(**BASE)
    assert first == cell_id(**{**BASE, "params": {"k": 20}})
    assert len(first) == 20
    changes = {"suite": "linear", "task_name": "other", "params": {"k": 21}, "seed": 1, "protocol_version": "2",
               "checkpoint_sha256": "cd" * 32, "options": {"ks": [21]}, "dataset_sha256": "ef" * 32}
    ids = {cell_id(**{**BASE, key: value}) for key, value in changes.items()}
    assert first not in ids and len(ids) == len(changes)


def test_param_order_does_not_change_the_id():
    a = cell_id(**{**BASE, "params": {"a": 1, "b": 2}})
    b = cell_id(**{**BASE, "params": {"b": 2, "a": 1}})
    assert a == b


def test_publish_once_refuses_a_second_writer(tmp_path):
    target = tmp_path / "result.json"
    assert publish_json_once(target, minimal_result(mean=1.0))
    assert not publish_json_once(target, minimal_result(mean=2.0))
    assert read_result(target)["metrics"]["acc"]["mean"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left behind


def _race(args):
    path, value = args
    return publish_json_once(Path(path), minimal_result(mean=value))


def test_concurrent_publishers_produce_exactly_one_complete_file(tmp_path):
    target = tmp_path / "cell" / "result.json"
    target.parent.mkdir()
    with multiprocessing.get_context("fork").Pool(8) as pool:
        outcomes = pool.map(_race, [(str(target), float(i)) for i in range(32)])
    assert sum(outcomes) == 1
    winner = outcomes.index(True)
    assert read_result(target)["metrics"]["acc"]["mean"] == float(winner)


@pytest.mark.parametrize("content, fragment", [
    ('{"schema_version": 1, "cell_id": "c1", "suite"', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"schema_version": 1}), "missing keys"),
    (json.dumps({**minimal_result(), "schema_version": 99}), "schema_version 99"),
    (json.dumps({**minimal_result(), "metrics": {"acc": {"mean": "high"}}}), "no numeric 'mean'"),
    (json.dumps({**minimal_result(), "metrics": {}}), "non-empty"),
])
def test_corrupt_results_are_named(tmp_path, content, fragment):
    path = tmp_path / "result.json"
    path.write_text(content)
    with pytest.raises(CorruptResult, match=fragment) as info:
        read_result(path)
    assert str(path) in str(info.value)
    assert CellFolder(tmp_path).state().state == "corrupt"


def test_state_follows_the_files(tmp_path):
    folder = CellFolder(tmp_path / "c1")
    assert folder.state().state == "pending"
    atomic_write_json(folder.submitted_path, {"time": 10.0, "executor": "local", "job_id": "1"})
    assert folder.state().state == "submitted"
    atomic_write_json(folder.running_path, {"time": 11.0, "host": "h", "attempt": 1})
    assert folder.state().state == "running"
    atomic_write_json(folder.error_path, {"time": 12.0, "message": "RuntimeError: boom\nmore"})
    state = folder.state()
    assert (state.state, state.detail) == ("failed", "RuntimeError: boom")
    atomic_write_json(folder.submitted_path, {"time": 13.0, "executor": "local", "job_id": "2"})
    assert folder.state().state == "submitted"  # resubmitted after the failure
    publish_json_once(folder.result_path, minimal_result())
    assert folder.state().state == "done"


def test_events_ignore_a_line_cut_by_a_crash(tmp_path):
    append_event(tmp_path, "started", attempt=1)
    append_event(tmp_path, "result_written")
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"event": "resu')
    assert [e["event"] for e in read_events(tmp_path)] == ["started", "result_written"]


def test_files_respect_the_umask_instead_of_mkstemps_0600(tmp_path):
    """A teammate or a job running as another user must be able to read results and encoders."""
    import os
    import stat

    import numpy as np

    from ringbench_common.atomic_files import atomic_write_text
    from ringbench_testing.bench import make_encoder
    from transfer.features import save_array_atomic

    previous = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "marker.json", {"a": 1})
        assert publish_json_once(tmp_path / "result.json", minimal_result())
        make_encoder(tmp_path / "encoder.pt", "nce", 0)
        save_array_atomic(tmp_path / "features.npy", np.zeros(3))
        atomic_write_text(tmp_path / "episodes.json", "{}")
        os.umask(0o077)  # a private umask is respected too
        atomic_write_json(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(previous)
    for name in ("marker.json", "result.json", "encoder.pt", "features.npy", "episodes.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
