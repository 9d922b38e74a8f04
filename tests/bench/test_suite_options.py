"""Suite options typed once: every suite parses its options into one frozen dataclass, the plan parses it
once, and check, tasks, fingerprints and the cells use that object."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping

import pytest

from bench.plan import build_plan, parse_suite_options
from bench.suite import Cell, InputError
from bench.suites import SUITES, load_suite

# options small enough to plan quickly; the suites not listed plan with their defaults
PLAN_OPTIONS = {
    "estimators": ["mi=2", "k=16", "critics=optimal"],
    "meta_dataset": ["episodes=5"],
    "knn": ["ks=5"],
    "selftest": ["n_tasks=2"],
    "pretrain": ["recipes=digits_default_nce"],
}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_types_its_options_in_a_frozen_dataclass(name):
    suite = load_suite(name)
    settings = suite.parse_options(parse_suite_options(suite, []), None)
    assert dataclasses.is_dataclass(settings) and not isinstance(settings, Mapping)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, dataclasses.fields(settings)[0].name, None)
    assert suite.parse_options(settings) is settings  # the typed object passes through unparsed
    assert pickle.loads(pickle.dumps(settings)) == settings  # cells travel to jobs pickled


@pytest.mark.parametrize("name", sorted(PLAN_OPTIONS))
def test_the_plan_parses_options_once_and_every_cell_carries_them(name, tmp_path, monkeypatch, encoder_pair):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    suite = load_suite(name)
    real = suite.parse_options
    parses = []

    def counting(options, data_root=None):
        if isinstance(options, Mapping):
            parses.append(dict(options))
        return real(options, data_root)

    monkeypatch.setattr(suite, "parse_options", counting)
    checkpoints = [str(path) for path in encoder_pair] if suite.uses_checkpoints else []
    plan = build_plan(name, suite, results_root=tmp_path / "results", option_pairs=PLAN_OPTIONS[name],
                      checkpoint_specs=checkpoints, seeds=[0])
    assert len(parses) == 1
    assert plan.cells and all(planned.cell.settings is plan.settings for planned in plan.cells)
    assert dataclasses.is_dataclass(plan.settings)


def test_knn_option_errors_name_the_key_and_what_was_expected():
    suite = load_suite("knn")
    for pairs, message in ((["ks=0"], "knn ks=[0]: expected a comma list of positive integers"),
                           (["temperature=0"], "knn temperature=0.0: expected a positive number"),
                           (["batch_size=0"], "knn batch_size=0: expected an integer >= 1"),
                           (["temprature=1"], "unknown option 'temprature' for suite knn; valid keys: batch_size, "
                                              "cmc_features, device, force_rgb_input, ks, temperature "
                                              "(did you mean temperature?)")):
        with pytest.raises(InputError) as error:
            suite.parse_options(parse_suite_options(suite, pairs))
        assert str(error.value) == message


def test_selftest_cell_runs_from_its_typed_options_alone(tmp_path):
    """`run` reads the settings the plan parsed, not the raw mapping (here emptied to prove it)."""
    suite = load_suite("selftest")
    settings = suite.parse_options({"n_samples": 3, "fail_tasks": [1]})
    tasks = suite.tasks(settings, None)
    cell = Cell("selftest", tasks[0], None, 0, {}, None, tmp_path, settings=settings)
    assert suite.run(cell, tmp_path).metrics["value"].n == 3
    with pytest.raises(RuntimeError, match="fails on purpose"):
        suite.run(Cell("selftest", tasks[1], None, 0, {}, None, tmp_path, settings=settings), tmp_path)


def test_pretrain_overrides_reach_the_recipe_with_data_root_and_seed():
    suite = load_suite("pretrain")
    opts = suite.parse_options(parse_suite_options(suite, ['overrides={"epochs": 2, "data.root": "/d"}']))
    assert opts.config_overrides(None, 3) == {"epochs": 2, "data.root": "/d", "seed": 3}
    assert suite.parse_options({}).config_overrides("/x", None) == {"data.root": "/x"}
    with pytest.raises(InputError, match="pretrain recipes=: expected at least one recipe name"):
        suite.parse_options({"recipes": []})
