"""The coco_det suite: options, up-front refusals, the random control, and a run through bench.run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.suite import InputError
from bench.suites.coco_det import CocoDetSuite, random_control_encoder
from ringbench_testing.bench import run_bench
from ringbench_testing.detection import make_encoder
from transfer.detection.engines import detectron2_available


def options(data_root=None, **overrides):
    """The suite's typed options with `overrides`, parsed (and checked) for `data_root` as the plan does."""
    return CocoDetSuite().parse_options(dict(CocoDetSuite.options) | overrides, data_root)


def test_embedded_tasks_use_torchvision():
    tasks = CocoDetSuite().tasks(options(), None)
    assert [t.name for t in tasks] == ["digits/mask_rcnn", "digits/keypoint_rcnn"]
    assert {t.params["engine"] for t in tasks} == {"torchvision"}
    assert {t.profile for t in tasks} == {"cpu"}


def test_embedded_default_runs_three_fine_tuning_seeds(tmp_path, small_coco, encoder_r18):
    from bench.plan import build_plan

    def seeds(data_root, given=None):
        plan = build_plan("coco_det", CocoDetSuite(), results_root=tmp_path / "results", checkpoint_specs=[str(encoder_r18)],
                          data_root=data_root, seeds=given)
        return sorted({planned.cell.seed for planned in plan.cells})

    assert seeds(None) == [0, 1, 2]  # the embedded default: one fine-tuning run is too noisy to read alone
    assert seeds(small_coco) == [0]  # an explicit --data-root keeps the suite's single seed
    assert seeds(None, [4]) == [4]  # --seeds always wins


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tasks": "mask_rcnn,panoptic"}, r"unknown panoptic; valid: a comma list of mask_rcnn, keypoint_rcnn"),
        ({"engine": "mmdet"}, r"engine='mmdet': expected one of auto, detectron2, torchvision"),
        ({"recipe": "c5"}, r"recipe='c5'"),
        ({"schedule_scale": -1.0}, r"schedule_scale='-1.0': expected a number > 0"),
        ({"recipe": "c4", "engine": "torchvision"}, r"recipe=c4 .* runs on Detectron2 only"),
        ({"max_iter": -1}, r"max_iter='-1': expected an integer >= 0"),
    ],
)
def test_bad_options_are_refused(overrides, message):
    with pytest.raises(InputError, match=message):
        options(**overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MODEL.RPN.SMOOTH_L1_BETA", r"KEY VALUE pairs .* odd number of words"),
        ("model.rpn.beta 0.1", r"'model.rpn.beta' is not a Detectron2 config key"),
        ("SOLVER 0.1", r"'SOLVER' is not a Detectron2 config key"),
        ("MODEL.RPN.SMOOTH_L1_BETA 0.1 MODEL.RPN.SMOOTH_L1_BETA 0.2", r"given twice: \['MODEL.RPN.SMOOTH_L1_BETA'\]"),
        ("MODEL.ANCHOR_GENERATOR.SIZES '[[32], [64]'", r"value '\[\[32\], \[64\]' of MODEL.ANCHOR_GENERATOR.SIZES is not valid YAML"),
        ("MODEL.RPN.SMOOTH_L1_BETA 'unclosed", r"detectron2_opts=.*No closing quotation"),
    ],
)
def test_bad_detectron2_opts_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        options(detectron2_opts=text)


def test_detectron2_opts_keep_their_yaml_types_and_need_the_detectron2_engine():
    from bench.suites.coco_det import parse_detectron2_opts

    parsed = parse_detectron2_opts("MODEL.RPN.SMOOTH_L1_BETA 0.111 MODEL.ROI_BOX_HEAD.POOLER_TYPE ROIAlign "
                                   "MODEL.ANCHOR_GENERATOR.SIZES '[[32], [64]]' TEST.PRECISE_BN.ENABLED false")
    assert parsed == (("MODEL.RPN.SMOOTH_L1_BETA", 0.111), ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign"),
                                      ("MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64]]), ("TEST.PRECISE_BN.ENABLED", False))
    assert options().detectron2_pairs == ()
    with pytest.raises(InputError, match=r"detectron2_opts configure Detectron2, but the engine is torchvision"):
        options(engine="torchvision", detectron2_opts="MODEL.RPN.SMOOTH_L1_BETA 0.1")


def test_the_added_detectron2_opts_option_keeps_earlier_cell_ids(tmp_path, encoder_r18):
    """Results stored before detectron2_opts existed keep their ids: the option at its default is left out."""
    from bench.fingerprint import embedded_fingerprint
    from bench.leaderboard import SuiteDefaults, identity_of
    from bench.plan import build_plan
    from bench.store import cell_id
    from transfer.detection.embedded import default_parameters

    plan = build_plan("coco_det", CocoDetSuite(), results_root=tmp_path / "results", checkpoint_specs=[str(encoder_r18)],
                      data_root=None, seeds=[0], task_names=["digits/mask_rcnn"])
    before = {key: value for key, value in CocoDetSuite.options.items() if key != "detectron2_opts"}  # the old option set
    task = plan.cells[0].cell.task
    expected = cell_id(suite="coco_det", task_name=task.name, params=task.params, seed=0, protocol_version=CocoDetSuite.protocol_version,
                       checkpoint_sha256=plan.cells[0].checkpoint["sha256"], options=before,
                       dataset_sha256=embedded_fingerprint("digits_coco", default_parameters()).sha256)
    assert plan.cells[0].cell_id == expected
    # the leaderboard's identity too: an old result and a new one of the same setting are one row
    defaults = SuiteDefaults.of("coco_det")
    old = {"task": {"params": task.params}, "options": before, "protocol_version": "1", "dataset": {"sha256": "d"}}
    new = old | {"options": before | {"detectron2_opts": ""}}
    changed = old | {"options": before | {"detectron2_opts": "MODEL.RPN.SMOOTH_L1_BETA 0.1"}}
    assert identity_of(old, defaults) == identity_of(new, defaults) != identity_of(changed, defaults)


def test_c4_defaults_to_mocos_2x_schedule():
    from bench.suites.coco_det import CocoDetOptions

    assert CocoDetOptions(recipe="c4").scale == 2.0  # MoCo's coco_R_50_C4_2x
    assert CocoDetOptions().scale == 1.0  # FPN: Detectron2's 1x
    assert CocoDetOptions(recipe="c4", schedule_scale=1.0).scale == 1.0  # asked for: kept


@pytest.mark.parametrize("max_iter", [2, 6, 7])
def test_short_max_iter_gives_a_schedule_both_engines_run(max_iter):
    from bench.suites.coco_det import cell_schedule

    for task in ("mask_rcnn", "keypoint_rcnn"):
        _protocol, schedule = cell_schedule(task, embedded=True, schedule_scale=1.0, ims_per_batch=0, max_iter=max_iter)
        assert schedule.max_iter == max_iter and schedule.steps == {2: (), 6: (4,), 7: (5, 6)}[max_iter]
        _protocol, coco = cell_schedule(task, embedded=False, schedule_scale=2.0, ims_per_batch=8, max_iter=0)
        assert (coco.max_iter, coco.steps) == (360000, (240000, 320000))


def test_detectron2_asked_for_but_absent_says_how_to_install():
    if detectron2_available():
        assert {t.params["engine"] for t in CocoDetSuite().tasks(options(engine="detectron2"), None)} == {"detectron2"}
        return
    with pytest.raises(InputError, match=r"detectron2 is not importable.*install it from source.*--no-build-isolation"):
        CocoDetSuite().tasks(options(engine="detectron2"), None)


def test_check_refuses_bad_checkpoints_and_data(tmp_path, encoder_r18, encoder_cifar, small_coco):
    suite = CocoDetSuite()
    suite.check(options(small_coco), small_coco, [encoder_r18])  # the small embedded set under --data-root is valid
    with pytest.raises(InputError, match=r"cifar stem .* needs the ImageNet stem"):
        suite.check(options(), None, [encoder_cifar])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"checkpoint refused: .*broken.pt"):
        suite.check(options(), None, [broken])
    with pytest.raises(InputError, match=r"missing COCO 2017 files"):
        suite.check(options(tmp_path), tmp_path, [encoder_r18])


def test_random_control_encoder(tmp_path, monkeypatch, encoder_r18):
    from pretrain.checkpoint import load_encoder

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    path = random_control_encoder(encoder_r18)
    control = load_encoder(path)
    reference = load_encoder(encoder_r18)
    assert control.metadata["method"] == "random" and control.metadata["epochs"] == 0
    assert control.metadata["mean"] == reference.metadata["mean"] and control.metadata["stem"] == "imagenet"
    assert random_control_encoder(encoder_r18) == path  # built once
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "other"))
    again = load_encoder(random_control_encoder(encoder_r18))
    assert all((again.model.state_dict()[k] == v).all() for k, v in control.model.state_dict().items())  # seeded


def test_random_control_encoder_without_a_reference_takes_the_embedded_recipe(tmp_path, monkeypatch):
    """The default coco_det plan builds the control before any encoder exists: from the recipe alone."""
    from pretrain.checkpoint import load_encoder
    from pretrain.data import dataset_stats
    from pretrain.embedded import EMBEDDED_RECIPES
    from pretrain.recipes import recipe_config

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    recipe = recipe_config(EMBEDDED_RECIPES[0])
    control = load_encoder(random_control_encoder())
    assert control.metadata["image_size"] == recipe.data.image_size
    assert (control.metadata["mean"], control.metadata["std"]) == dataset_stats(recipe.data.name)
    assert control.metadata["method"] == "random" and control.metadata["input_view"] == "rgb"


@pytest.mark.slow
def test_bench_run_local_executor_on_the_small_embedded_set(tmp_path, small_coco, monkeypatch):
    import os

    from ringbench_testing.bench import REPO

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    bench_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bench_env.pop("RINGBENCH_RESULTS", None)
    folder = tmp_path / "enc"
    folder.mkdir()
    pair = [make_encoder(folder / "nce.pt", sampler="nce", seed=0), make_encoder(folder / "ring.pt", sampler="ring", seed=0)]
    results = tmp_path / "results"
    out = run_bench(["--suite", "coco_det", "--checkpoints", ",".join(map(str, pair)), "--data-root", str(small_coco),
                     "--executor", "local", "--results", str(results), "--no-progress", "max_iter=2"], bench_env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(results / "coco_det.csv")
    assert set(table["task"]) == {"digits/mask_rcnn", "digits/keypoint_rcnn"}
    assert {"bbox/AP", "segm/AP", "keypoints/AP"} <= set(table["metric"])
    assert table["mean"].between(0, 100).all()
    segm = table[(table["metric"] == "segm/AP")]
    assert set(segm["n"]) == {10}  # per-category APs of the ten digit classes are the samples
    assert set(table[table["metric"] == "keypoints/AP"]["n"]) == {10}  # keypoints are per digit class too
    paired = pd.read_csv(results / "coco_det_paired.csv")
    assert {"bbox/AP", "segm/AP", "keypoints/AP"} <= set(paired["metric"])
    stored = [json.loads(path.read_text()) for path in (results / "coco_det" / "cells").glob("*/result.json")]
    assert len(stored) == 4 and {r["engine"] for r in stored} == {"torchvision"}
    assert all("2 iterations (max_iter=2)" in r["info"]["schedule_stated"] for r in stored)


@pytest.mark.slow
@pytest.mark.detectron2
@pytest.mark.skipif(not detectron2_available(), reason="detectron2 is not installed (not on PyPI; install it from source to run this)")
def test_bench_run_detectron2_engine_on_the_small_embedded_set(tmp_path, small_coco, monkeypatch):
    """engine=detectron2 through bench.run: both tasks finish with finite metrics (the four faults stopped every
    cell before), max_iter=6 (steps [4]) and the keypoint task's full-model clipping included."""
    import os

    from ringbench_testing.bench import REPO

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RINGBENCH_RESULTS", None)
    encoder = make_encoder(tmp_path / "nce.pt", sampler="nce", seed=0)
    results = tmp_path / "results"
    out = run_bench(["--suite", "coco_det", "--checkpoints", str(encoder), "--data-root", str(small_coco), "--executor", "debug",
                     "--results", str(results), "--no-progress", "engine=detectron2", "max_iter=6"], env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    stored = [json.loads(path.read_text()) for path in (results / "coco_det" / "cells").glob("*/result.json")]
    assert len(stored) == 2 and {r["engine"] for r in stored} == {"detectron2"}
    assert all("steps [4]" in r["info"]["schedule_stated"] for r in stored)
    table = pd.read_csv(results / "coco_det.csv")
    assert {"bbox/AP", "segm/AP", "keypoints/AP"} <= set(table["metric"]) and table["mean"].between(0, 100).all()
    assert all(r["info"]["resumed"] is False for r in stored)
    cells = results / "coco_det" / "cells"
    assert len(list(cells.glob("*/output/detectron2_config.yaml"))) == len(list(cells.glob("*/output/config.yaml"))) == 2


def test_planning_resolves_each_checkpoint_once_and_parses_options_once(tmp_path, monkeypatch):
    """Two checkpoints: one load per file (validation, sha256 and metadata together) and one options parse,
    however many hops read them; a second plan of the same files loads nothing."""
    from bench.plan import build_plan
    from bench.suites import coco_det
    from pretrain import checkpoint

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    files = [make_encoder(tmp_path / f"e{i}.pt", seed=i, sampler=s) for i, s in enumerate(("nce", "ring"))]
    loads, parses = [], []
    real_load, real_parse = checkpoint.load_encoder, coco_det.CocoDetOptions.parse.__func__
    monkeypatch.setattr(checkpoint, "load_encoder", lambda path, *a, **k: loads.append(str(path)) or real_load(path, *a, **k))
    monkeypatch.setattr(coco_det.CocoDetOptions, "parse",
                        classmethod(lambda cls, options, data_root=None: parses.append(1) or real_parse(cls, options, data_root)))
    plan = build_plan("coco_det", CocoDetSuite(), results_root=tmp_path / "results", checkpoint_specs=[str(f) for f in files],
                      option_pairs=["tasks=mask_rcnn"], seeds=[0])
    assert sorted(loads) == sorted(str(f.resolve()) for f in files) and len(parses) == 1
    assert len(plan.cells) == 2 and all(isinstance(p.cell.settings, coco_det.CocoDetOptions) for p in plan.cells)
    assert {p.checkpoint["sampler"] for p in plan.cells} == {"nce", "ring"}
    loads.clear()
    build_plan("coco_det", CocoDetSuite(), results_root=tmp_path / "results", checkpoint_specs=[str(f) for f in files],
               option_pairs=["tasks=mask_rcnn"], seeds=[0])
    assert loads == []  # known, unchanged files: their infos come from the cache


def test_coco_det_fine_tunes_the_cmc_l_encoder_on_its_view(tmp_path, small_coco, monkeypatch):
    import torch
    from cmc_encoders import cmc_backbones, write_cmc_encoder, write_old_cmc_encoder

    from bench.suite import Cell
    from transfer.detection.engines import EngineResult, torchvision_engine

    seen = {}

    def capture(job, state_dict, heads, where):
        seen.update(job=job, state_dict=state_dict)
        return EngineResult(metrics={"bbox/AP": 1.0}, per_category={}, info={})

    monkeypatch.setattr(torchvision_engine, "train_and_evaluate", capture)
    suite = CocoDetSuite()
    path = write_cmc_encoder(tmp_path / "cmc.pt")
    old = write_old_cmc_encoder(tmp_path / "old.pt")
    with pytest.raises(InputError, match="old.pt: a CMC encoder file without metadata"):
        suite.check(options(small_coco, tasks="mask_rcnn"), small_coco, [old])
    suite.check(options(small_coco, tasks="mask_rcnn", force_rgb_input=True), small_coco, [old])
    lightness, _ = cmc_backbones()
    for checkpoint, opts, view in ((path, options(small_coco, tasks="mask_rcnn"), "lightness"),
                                   (old, options(small_coco, tasks="mask_rcnn", force_rgb_input=True), "rgb")):
        [task] = suite.tasks(opts, small_coco)
        cell = Cell("coco_det", task, checkpoint, 0, {}, small_coco, tmp_path / "shared", opts)
        output = suite.run(cell, tmp_path / "cell")
        assert seen["job"].input_view == view
        assert output.info["input_view"] == view and output.info["cmc_features"] == "l"
        assert all(torch.equal(seen["state_dict"][k], v) for k, v in lightness.state_dict().items())


@pytest.mark.detectron2
@pytest.mark.skipif(not detectron2_available(), reason="detectron2 is not installed (not on PyPI; install it from source to run this)")
def test_detectron2_opts_keys_are_checked_against_detectron2s_config_before_any_cell():
    from transfer.detection.engines.detectron2_engine import unknown_config_keys

    assert unknown_config_keys(["MODEL.RPN.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.RPN.NOPE",
                                "MODEL.RPN.SMOOTH_L1_BETA.DEEPER"]) == ["MODEL.RPN.NOPE", "MODEL.RPN.SMOOTH_L1_BETA.DEEPER"]
    with pytest.raises(InputError, match=r"detectron2_opts key\(s\) MODEL.NOPE are not in Detectron2's config"):
        options(engine="detectron2", detectron2_opts="MODEL.NOPE 1")
    tasks = CocoDetSuite().tasks(options(engine="detectron2", detectron2_opts="MODEL.RPN.SMOOTH_L1_BETA 0.111"), None)
    assert {t.params["engine"] for t in tasks} == {"detectron2"}
