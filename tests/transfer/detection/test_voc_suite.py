"""The voc_det suite: options, refusals before submission, the dataset fingerprint in the cell id, the C4 model,
and a run through bench.run with the published rows beside the measured ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.suite import InputError
from bench.suites.voc_det import VocDetOptions, VocDetSuite
from ringbench_testing.bench import run_bench
from ringbench_testing.detection import make_encoder
from transfer.detection.voc_embedded import build_embedded_voc


def options(data_root=None, **overrides):
    """The suite's typed options with `overrides`, parsed (and checked) for `data_root` as the plan does."""
    return VocDetSuite().parse_options(dict(VocDetSuite.options) | overrides, data_root)


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory) -> Path:
    return build_embedded_voc(tmp_path_factory.mktemp("voc") / "digits", voc2007_trainval=6, voc2012_trainval=6,
                              voc2007_test=12)


def test_embedded_task_uses_torchvision_and_real_data_five_seeds(small_voc):
    suite = VocDetSuite()
    (task,) = suite.tasks(options(), None)
    assert task.name == "digits/faster_rcnn_c4" and task.params["engine"] == "torchvision" and task.profile == "cpu"
    assert task.params["train_years"] == ["2007", "2012"]
    assert suite.seeds_for(small_voc) == (0, 1, 2, 3, 4)  # MoCo's five trials on a --data-root
    assert suite.seeds_for(None) == (0, 1, 2)  # the embedded default: three (a few minutes in all)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train_years": "2007,2009"}, r"train_years='2007,2009': expected 2007 and/or 2012"),
    ({"engine": "mmdet"}, r"engine='mmdet': expected one of auto, detectron2, torchvision"),
    ({"schedule_scale": 0}, r"schedule_scale='0': expected a number > 0"),
    ({"max_iter": -2}, r"max_iter='-2': expected an integer >= 0"),
    ({"recipe": "fpn"}, r"unknown voc_det option 'recipe'"),
    ({"detectron2_opts": "MODEL.RPN.SMOOTH_L1_BETA 0.1"}, r"detectron2_opts configure Detectron2, but the engine is torchvision"),
])
def test_bad_options_are_refused(overrides, message):
    with pytest.raises(InputError, match=message):
        VocDetSuite().tasks(options(**overrides), None)


def test_check_names_the_bad_file_before_anything_runs(small_voc, tmp_path):
    broken = Path(shutil.copytree(small_voc, tmp_path / "broken"))
    shutil.rmtree(broken / "VOCdevkit" / "VOC2012")
    with pytest.raises(InputError, match=r"voc_det: .*no VOC2012 folder.*needs VOC2012"):
        VocDetSuite().check(options(broken), broken, [])
    VocDetSuite().check(options(broken, train_years="2007"), broken, [])  # 2007 alone is fine


def test_resnet18_is_taken_by_both_engines_and_a_cifar_stem_by_neither(tmp_path):
    encoder = make_encoder(tmp_path / "r18.pt")
    for engine in ("detectron2", "torchvision"):  # Detectron2 gets a basic-block res5 head for it
        VocDetSuite().check_checkpoints(VocDetOptions(resolved_engine=engine), [encoder])
    cifar = make_encoder(tmp_path / "cifar.pt", stem="cifar")
    with pytest.raises(InputError, match=r"cifar\.pt has a cifar stem"):
        VocDetSuite().check_checkpoints(VocDetOptions(resolved_engine="detectron2"), [cifar])


def test_the_dataset_fingerprint_is_part_of_the_cell_id(small_voc, tmp_path):
    from bench.plan import build_plan

    encoder = make_encoder(tmp_path / "r18.pt")
    edited = Path(shutil.copytree(small_voc, tmp_path / "edited"))
    xml = sorted((edited / "VOCdevkit" / "VOC2007" / "Annotations").glob("*.xml"))[-1]
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))

    def cell_ids(root):
        plan = build_plan("voc_det", VocDetSuite(), results_root=tmp_path / "results", checkpoint_specs=[str(encoder)],
                          data_root=root, seeds=[0])
        return {planned.cell_id for planned in plan.cells}

    original, copy = cell_ids(small_voc), cell_ids(Path(shutil.copytree(small_voc, tmp_path / "moved")))
    assert original == copy  # the same data elsewhere: the same cells
    assert cell_ids(edited).isdisjoint(original)  # one object turned difficult: new cells


def test_c4_model_takes_the_encoder_as_trunk_and_res5_head(small_voc, tmp_path):
    from pretrain.checkpoint import load_encoder
    from transfer.detection.configs import VocDetectionJob, embedded_voc_protocol
    from transfer.detection.engines.torchvision_voc import build_c4_model, load_encoder_into_c4
    from transfer.detection.voc_embedded import DIGIT_CLASSES

    encoder = load_encoder(make_encoder(tmp_path / "r18.pt", seed=4), cmc_features=None)
    protocol = embedded_voc_protocol()
    job = VocDetectionJob(arch="resnet18", data_root=small_voc, train_years=("2007",), classes=DIGIT_CLASSES,
                          schedule=protocol.schedule, input=protocol.input, pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3,
                          output_dir=tmp_path / "out", heads=protocol.heads)
    model = build_c4_model(job)
    state = encoder.backbone.state_dict()
    load_encoder_into_c4(model, state, "resnet18", "test encoder")
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.roi_heads.box_head.res5[0].downsample[0].weight, state["layer4.0.downsample.0.weight"])
    assert model.roi_heads.box_head.norm.num_features == 512  # MoCo's extra norm after res5
    assert model.roi_heads.box_predictor.cls_score.out_features == 11  # ten classes + background
    model.train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([3])}] * 2
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    model.eval()
    with torch.no_grad():
        (output,) = model(images[:1])
    assert set(output) == {"boxes", "labels", "scores"}
    with pytest.raises(Exception, match=r"does not fit|missing|unexpected"):
        load_encoder_into_c4(model, {k: v for k, v in state.items() if not k.startswith("layer4.1.")}, "resnet18", "cut")


@pytest.mark.slow
def test_bench_run_on_the_small_embedded_set_with_published_rows(small_voc, tmp_path, monkeypatch):
    import os

    import pandas as pd

    from ringbench_testing.bench import REPO

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RINGBENCH_RESULTS", None)
    pair = [make_encoder(tmp_path / "nce.pt", sampler="nce", seed=0), make_encoder(tmp_path / "ring.pt", sampler="ring", seed=0)]
    results = tmp_path / "results"
    out = run_bench(["--suite", "voc_det", "--checkpoints", ",".join(map(str, pair)), "--data-root", str(small_voc),
                     "--executor", "debug", "--results", str(results), "--no-progress", "--seeds", "0", "max_iter=2"],
                    env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(results / "voc_det.csv")
    assert {"bbox/AP50", "bbox/AP", "bbox/AP75"} <= set(table["metric"])
    assert set(table[table["metric"] == "bbox/AP50"]["n"]) == {10}  # per-class APs are the samples
    stored = [json.loads(p.read_text()) for p in (results / "voc_det" / "cells").glob("*/result.json")]
    assert len(stored) == 2
    config = stored[0]["info"]["protocol_config"]
    assert config["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm" and config["SOLVER"]["MAX_ITER"] == 2
    markdown = (results / "voc_det.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model |"))
    assert all(f"digits/faster_rcnn_c4 bbox/{name}" in header for name in ("AP50", "AP", "AP75"))
    published = markdown.split("## Published reference rows (cited, not measured here)", 1)[1]
    assert "| MoCo v2 800ep (published) | voc0712/faster_rcnn_c4 | 82.5 | 57.4 | 64.0 | 5 | facebookresearch/moco" in published


@pytest.mark.slow
def test_pretrain_then_voc_det(tmp_path, monkeypatch):
    """--then voc_det fine-tunes the encoders a pretraining run produces, through the generic chain."""
    import os

    from ringbench_testing.bench import REPO, TINY

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RINGBENCH_RESULTS", None)
    results = tmp_path / "results"
    out = run_bench(["--suite", "pretrain", TINY, "--then", "voc_det", "max_iter=2", "--seeds", "0", "--executor", "debug",
                     "--results", str(results), "--no-progress"], env, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    stored = [json.loads(p.read_text()) for p in (results / "voc_det" / "cells").glob("*/result.json")]
    assert sorted(r["checkpoint"]["sampler"] for r in stored) == ["nce", "ring"]
    assert (results / "voc_det.md").is_file()


def test_published_rows_carry_their_source_and_are_refused_without_one(tmp_path):
    from bench.published import published_markdown, read_published

    rows = VocDetSuite().published_rows()
    assert list(rows["model"]) == ["supervised IN-1M", "MoCo v1 200ep", "MoCo v2 200ep", "MoCo v2 800ep"]
    assert rows.loc[rows["model"] == "MoCo v2 800ep", ["AP50", "AP", "AP75"]].values.tolist() == [[82.5, 57.4, 64.0]]
    assert rows["source"].str.contains("facebookresearch/moco").all()
    assert "| supervised IN-1M (published) | voc0712/faster_rcnn_c4 | 81.3 | 53.5 | 58.8 | 5 |" in published_markdown(rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("model,task,AP50,source\nmine,voc,80.0,\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: row 'mine' has no source"):
        read_published(bad)
    bad.write_text("model,task,AP50,source\nmine,voc,high,a paper\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: AP50='high' is not a number"):
        read_published(bad)


@pytest.mark.slow
@pytest.mark.detectron2
def test_bench_run_detectron2_engine_on_the_small_embedded_set(small_voc, tmp_path, monkeypatch):
    """engine=detectron2: MoCo's datasets registered on the data root, PascalVOCDetectionEvaluator's metrics."""
    pytest.importorskip("detectron2")
    import os

    from ringbench_testing.bench import REPO

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RINGBENCH_RESULTS", None)
    encoders = [make_encoder(tmp_path / "r50.pt", arch="resnet50"), make_encoder(tmp_path / "r18.pt")]
    results = tmp_path / "results"
    out = run_bench(["--suite", "voc_det", "--checkpoints", ",".join(map(str, encoders)), "--data-root", str(small_voc),
                     "--executor", "debug", "--results", str(results), "--no-progress", "--seeds", "0",
                     "engine=detectron2", "max_iter=4"], env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    stored = [json.loads(p.read_text()) for p in (results / "voc_det" / "cells").glob("*/result.json")]
    assert sorted(r["info"]["arch"] for r in stored) == ["resnet18", "resnet50"]
    for result in stored:
        assert result["info"]["engine"] == "detectron2" and result["info"]["total_cpu_seconds"] > 0
        assert {"bbox/AP50", "bbox/AP", "bbox/AP75"} == set(result["metrics"])
        for metric in result["metrics"].values():  # per-class APs behind Detectron2's means, for paired statistics
            assert metric["n"] == 10 and len(metric["sample_ids"]) == 10
            assert sum(metric["samples"]) / 10 == pytest.approx(metric["mean"], abs=1e-3)
        assert "per-class" in result["info"]["metric_samples"]


@pytest.mark.detectron2
def test_detectron2_c4_model_of_a_resnet18_loads_every_encoder_weight(small_voc, tmp_path):
    """The basic-block res5 head: Detectron2's C4 model built from our config takes layer1-3 as its backbone and
    layer4 as roi_heads.res5, every converted weight landing unchanged, as the torchvision engine's C4 does."""
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from pretrain.checkpoint import load_encoder
    from transfer.detection.configs import (
        VocDetectionJob,
        detectron2_voc_config,
        embedded_voc_protocol,
        write_config,
    )
    from transfer.detection.convert import write_detectron2_weights
    from transfer.detection.engines.detectron2_engine import _register_extra_norm_head
    from transfer.detection.voc_embedded import DIGIT_CLASSES

    state = load_encoder(make_encoder(tmp_path / "r18.pt", seed=5), cmc_features=None).backbone.state_dict()
    weights = write_detectron2_weights(state, "resnet18", tmp_path / "r18.pkl")
    protocol = embedded_voc_protocol()
    job = VocDetectionJob(arch="resnet18", data_root=small_voc, train_years=("2007",), classes=DIGIT_CLASSES,
                          schedule=protocol.schedule, input=protocol.input, pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3,
                          output_dir=tmp_path / "out", heads=protocol.heads)
    _register_extra_norm_head()
    cfg = get_cfg()
    cfg.merge_from_file(str(write_config(detectron2_voc_config(job, weights), tmp_path / "config.yaml")))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    pairs = {"backbone.res4.1.conv2.weight": "layer3.1.conv2.weight", "backbone.stem.conv1.weight": "conv1.weight",
             "roi_heads.res5.0.conv1.weight": "layer4.0.conv1.weight",
             "roi_heads.res5.0.shortcut.weight": "layer4.0.downsample.0.weight",
             "roi_heads.res5.1.conv2.norm.weight": "layer4.1.bn2.weight",
             "roi_heads.res5.1.conv2.norm.running_var": "layer4.1.bn2.running_var"}
    for ours, theirs in pairs.items():
        assert torch.equal(params[ours].cpu(), state[theirs]), ours
    res5_convs = [name for name, value in params.items() if name.startswith("roi_heads.res5.") and value.dim() == 4]
    assert len(res5_convs) == 5  # two basic blocks (conv1, conv2 each) and one projection shortcut: resnet18's layer4
    assert model.roi_heads.res5.norm.num_features == 512  # MoCo's extra norm, after res5
    assert model.roi_heads.box_predictor.cls_score.in_features == 512
