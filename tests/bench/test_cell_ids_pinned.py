"""Cell ids are pinned: declaring the options as one dataclass per suite must not move any stored result.

`pinned_cell_ids.json` holds, per suite and option overrides, every task's cell id as computed by the
code before the options were declared once (with a fixed checkpoint hash and no dataset fingerprint,
which the options do not touch). The ids hash the identity options, so values and JSON types must stay
exactly what they were (e.g. coco_det's schedule_scale stays the integer 0, meta_dataset's probes one
comma string)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.plan import parse_suite_options
from bench.store import cell_id
from bench.suites import load_suite

PINNED = json.loads((Path(__file__).with_name("pinned_cell_ids.json")).read_text())


def current_ids(case: str) -> dict[str, str]:
    name, *pairs = case.split(" ")
    if name == "pretrain" and pairs:  # the JSON value holds a space
        pairs = [" ".join(pairs)]
    suite = load_suite(name)
    options = parse_suite_options(suite, pairs)
    settings = suite.parse_options(options, None)
    return {task.name: cell_id(suite=name, task_name=task.name, params=task.params, seed=0,
                               protocol_version=suite.protocol_version,
                               checkpoint_sha256="0" * 64 if suite.uses_checkpoints else None,
                               options=suite.identity_options(options))
            for task in suite.tasks(settings, None)}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_cell_ids_are_those_stored_before(case):
    assert current_ids(case) == PINNED[case]


def test_the_pins_cover_every_suite_with_defaults_and_overrides():
    from bench.suites import SUITES

    cases = [case.split(" ") for case in PINNED]
    assert {case[0] for case in cases} == set(SUITES) - {"voc_det"}
    assert all(any(len(case) == 1 and case[0] == name for case in cases) for name in SUITES if name != "voc_det")
    assert sum(len(case) > 1 for case in cases) >= 25
