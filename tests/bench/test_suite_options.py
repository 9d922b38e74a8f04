"""Suite options declared and typed once: every suite declares one frozen dataclass (defaults, help, checks),
the plan parses it once, and check, tasks, fingerprints and the cells use that object."""

from __future__ import annotations

import dataclasses
import json
import pickle

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
    assert isinstance(settings, suite.Options) and dataclasses.is_dataclass(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, dataclasses.fields(settings)[0].name, None)
    assert pickle.loads(pickle.dumps(settings)) == settings  # cells travel to jobs pickled
    # the defaults dict is derived from the one declaration, and every key has its help text
    assert list(suite.options) == list(suite.Options.fields())
    assert all(field.metadata["help"] for field in suite.Options.fields().values())
    assert len(suite.Options.help()) == len(suite.options)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_the_identity_mapping_round_trips_through_the_typed_object(name):
    """The mapping stored in result.json parses back into the same typed options."""
    suite = load_suite(name)
    options = parse_suite_options(suite, [])
    assert json.loads(json.dumps(options)) == options
    assert suite.parse_options(json.loads(json.dumps(options))) == suite.parse_options(options)


def test_one_unknown_key_message_with_close_matches():
    for name, key, close in (("knn", "temprature", "temperature"), ("coco_det", "engines", "engine"),
                             ("meta_dataset", "episode", "episodes")):
        suite = load_suite(name)
        for parse in (lambda s, k: parse_suite_options(s, [f"{k}=1"]), lambda s, k: s.parse_options({k: 1})):
            with pytest.raises(InputError) as error:
                parse(suite, key)
            assert str(error.value).startswith(f"unknown {name} option {key!r} (did you mean {close}")
            assert f"valid keys: {', '.join(sorted(suite.options))}" in str(error.value)


def test_values_are_typed_from_the_annotations():
    estimators = load_suite("estimators")
    options = parse_suite_options(estimators, ["mi=2", "k=16,64", "critics=optimal", "bands=0.1:0.1"])
    assert options["mi"] == [2.0] and options["k"] == [16, 64] and options["bands"] == ["0.1:0.1"]
    typed = estimators.parse_options(options)
    assert typed.mi == (2.0,) and typed.k == (16, 64) and typed.band_cuts == ((0.1, 0.1),)
    with pytest.raises(InputError, match="estimators option k='1.5': expected a comma list of integers"):
        parse_suite_options(estimators, ["k=1.5"])
    with pytest.raises(InputError, match="estimators option dim=True: expected an integer"):
        estimators.parse_options({"dim": True})
    linear = load_suite("linear")
    assert linear.parse_options(parse_suite_options(linear, ["knn=off"])).knn is False
    with pytest.raises(InputError, match="linear option knn='maybe': expected a boolean"):
        parse_suite_options(linear, ["knn=maybe"])


def test_checks_normalise_and_refuse_with_the_key_and_what_was_expected():
    meta = load_suite("meta_dataset")
    options = parse_suite_options(meta, ["split=test", "probes=ncc,ncc"])
    assert options["split"] == "test"  # the identity keeps what was given (as before)
    typed = meta.parse_options(options)
    assert typed.split == "TEST" and typed.probes == ("ncc",)
    with pytest.raises(InputError, match="meta_dataset option probes='knn': unknown knn; valid: a comma list of ncc"):
        meta.parse_options(parse_suite_options(meta, ["probes=knn"]))
    with pytest.raises(InputError, match="estimators option bands='0:0.1': ring band is empty"):
        load_suite("estimators").parse_options({"bands": ["0:0.1"]})
    with pytest.raises(InputError, match="estimators pool=8: the band w_out:w_in=0.1:0.1 keeps ranks .0, 0."):
        load_suite("estimators").parse_options({"pool": 8, "k": [4], "learned_k": [4], "train_pool": 512})


def test_coco_det_resolves_its_engine_once_when_parsing(monkeypatch):
    """The engine `auto` becomes is resolved while parsing; tasks read it and never resolve again."""
    from transfer.detection import engines

    suite = load_suite("coco_det")
    calls = []
    real = engines.resolve_engine
    monkeypatch.setattr(engines, "resolve_engine", lambda *a, **k: calls.append(a) or real(*a, **k))
    settings = suite.parse_options(parse_suite_options(suite, ["tasks=mask_rcnn"]))
    assert settings.resolved_engine == "torchvision" and len(calls) == 1
    suite.check(settings, None, [])
    assert [task.params["engine"] for task in suite.tasks(settings, None)] == ["torchvision"]
    assert len(calls) == 1
    assert settings.scale == 1.0 and parse_suite_options(suite, [])["schedule_scale"] == 0


@pytest.mark.parametrize("name", sorted(PLAN_OPTIONS))
def test_the_plan_parses_options_once_and_every_cell_carries_them(name, tmp_path, monkeypatch, encoder_pair):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    suite = load_suite(name)
    real = suite.parse_options
    parses = []

    def counting(options, data_root=None):
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
    for pairs, message in ((["ks=0"], "knn option ks='0': expected a comma list of numbers >= 1"),
                           (["temperature=0"], "knn option temperature='0.0': expected a positive number"),
                           (["batch_size=0"], "knn option batch_size='0': expected an integer >= 1"),
                           (["temprature=1"], "unknown knn option 'temprature' (did you mean temperature?); valid keys: "
                                              "batch_size, cmc_features, device, force_rgb_input, ks, temperature")):
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
    with pytest.raises(InputError, match="pretrain option recipes='': expected at least one recipe name"):
        suite.parse_options({"recipes": []})
