"""Conversion to Detectron2 names and back, container format, refusals, strict torchvision loading."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
import torchvision

from pretrain.backbones import build_backbone
from transfer.detection.__main__ import main as cli
from transfer.detection.convert import (
    CONTAINER_KEYS,
    ConversionError,
    build_fpn_backbone,
    convert_checkpoint_to_detectron2,
    convert_from_detectron2,
    convert_to_detectron2,
    load_backbone_body,
    read_detectron2_pickle,
    write_detectron2_pickle,
)

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def detectron2_names(blocks: list[int], convs_per_block: int) -> set[str]:
    """The Detectron2 backbone names written out by hand from the architecture (not from the converter)."""
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{e}" for e in BN_ENTRIES}
    for stage, count in enumerate(blocks, start=2):
        for block in range(count):
            for conv in range(1, convs_per_block + 1):
                names.add(f"res{stage}.{block}.conv{conv}.weight")
                names |= {f"res{stage}.{block}.conv{conv}.norm.{e}" for e in BN_ENTRIES}
        if stage > 2 or convs_per_block == 3:  # projection shortcut: every first block, but res2 of basic-block nets
            names.add(f"res{stage}.0.shortcut.weight")
            names |= {f"res{stage}.0.shortcut.norm.{e}" for e in BN_ENTRIES}
    return names


def torchvision_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """A torchvision ResNet's own state dict (with fc dropped, as encoders store it)."""
    model = getattr(torchvision.models, arch)(weights=None)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def test_resnet50_exact_detectron2_key_set():
    converted = convert_to_detectron2(torchvision_state_dict("resnet50"), "resnet50")
    expected = detectron2_names([3, 4, 6, 3], 3)
    assert set(converted) == expected
    assert len(converted) == 318  # 53 convs + 53 BN x 5 entries
    assert sum(1 for k in converted if not k.endswith("num_batches_tracked")) == 265
    assert converted["res5.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert converted["res2.0.shortcut.norm.running_var"].shape == (256,)
    assert all(isinstance(v, np.ndarray) for v in converted.values())


def test_resnet18_exact_detectron2_key_set():
    converted = convert_to_detectron2(torchvision_state_dict("resnet18"), "resnet18")
    assert set(converted) == detectron2_names([2, 2, 2, 2], 2)
    assert len(converted) == 120
    assert converted["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert "res2.0.shortcut.weight" not in converted  # BasicBlock res2 keeps the identity shortcut
    assert not any(re.search(r"layer|bn\d|downsample|module\.", k) for k in converted)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_round_trip_back_to_torchvision_names(arch):
    original = torchvision_state_dict(arch)
    for value in original.values():  # distinct values so a swapped key would show
        if value.is_floating_point():
            value.normal_()
    back = convert_from_detectron2(convert_to_detectron2(original, arch), arch)
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key


def test_container_written_and_read(tmp_path, encoder_r18):
    out = convert_checkpoint_to_detectron2(encoder_r18, tmp_path / "w.pkl")
    with open(out, "rb") as handle:
        payload = pickle.load(handle, encoding="latin1")  # how Detectron2 reads .pkl weights
    assert set(payload) == set(CONTAINER_KEYS)
    assert payload["matching_heuristics"] is True and payload["__author__"] not in ("Caffe2", "")
    assert len(payload["model"]) == 120
    assert read_detectron2_pickle(out)["model"].keys() == payload["model"].keys()
    encoder_weight = torch.load(encoder_r18, weights_only=True)["state_dict"]["layer3.1.bn2.running_mean"]
    assert np.array_equal(payload["model"]["res4.1.conv2.norm.running_mean"], encoder_weight.numpy())


def test_refuses_cifar_stem(tmp_path, encoder_cifar):
    with pytest.raises(ConversionError, match="CIFAR"):
        convert_to_detectron2(build_backbone("resnet18", "cifar").state_dict(), "resnet18")
    with pytest.raises(ConversionError, match="ImageNet stem"):
        convert_checkpoint_to_detectron2(encoder_cifar, tmp_path / "w.pkl")
    assert not (tmp_path / "w.pkl").exists()


def test_refuses_missing_unexpected_prefixed_and_misshapen_keys():
    state = torchvision_state_dict("resnet50")
    missing = {k: v for k, v in state.items() if k != "layer4.2.bn3.weight"}
    with pytest.raises(ConversionError, match=r"1 missing keys.*layer4\.2\.bn3\.weight"):
        convert_to_detectron2(missing, "resnet50")
    with pytest.raises(ConversionError, match="unexpected keys.*fc.weight"):
        convert_to_detectron2({**state, "fc.weight": torch.zeros(10, 2048)}, "resnet50")
    with pytest.raises(ConversionError, match="wrapper prefix.*module.encoder_q"):
        convert_to_detectron2({f"module.encoder_q.{k}": v for k, v in state.items()}, "resnet50")
    with pytest.raises(ConversionError, match="not a resnet50 backbone"):
        convert_to_detectron2(torchvision_state_dict("resnet18"), "resnet50")
    bad = dict(state)
    bad["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ConversionError, match=r"layer1\.0\.conv2\.weight has shape"):
        convert_to_detectron2(bad, "resnet50")


def test_writer_refuses_incomplete_detectron2_model(tmp_path):
    model = convert_to_detectron2(torchvision_state_dict("resnet18"), "resnet18")
    del model["res3.0.shortcut.norm.weight"]
    with pytest.raises(ConversionError, match=r"missing.*res3\.0\.shortcut\.norm\.weight"):
        write_detectron2_pickle(tmp_path / "x.pkl", model, "resnet18")
    assert not (tmp_path / "x.pkl").exists()


def test_strict_load_into_torchvision_backbone_body():
    state = torchvision_state_dict("resnet50")
    backbone = build_fpn_backbone("resnet50", torch.nn.BatchNorm2d)
    load_backbone_body(backbone.body, state, "test")
    assert torch.equal(backbone.body.layer2[0].conv2.weight, state["layer2.0.conv2.weight"])
    with pytest.raises(ConversionError, match="1 missing"):
        load_backbone_body(backbone.body, {k: v for k, v in state.items() if k != "conv1.weight"}, "test")


def test_cli_convert_both_targets(tmp_path, encoder_r18, encoder_cifar, capsys):
    assert cli(["convert", str(encoder_r18), "--to", "detectron2", "--out", str(tmp_path / "d2.pkl")]) == 0
    assert cli(["convert", str(encoder_r18), "--to", "torchvision", "--out", str(tmp_path / "tv.pth")]) == 0
    body_state = torch.load(tmp_path / "tv.pth", weights_only=True)
    backbone = build_fpn_backbone("resnet18", torch.nn.BatchNorm2d)
    assert backbone.body.load_state_dict(body_state, strict=True)  # no missing or unexpected keys
    assert cli(["convert", str(encoder_cifar), "--to", "detectron2", "--out", str(tmp_path / "c.pkl")]) == 2
    assert "ImageNet stem" in capsys.readouterr().err
    assert cli(["convert", str(tmp_path / "absent.pt"), "--to", "detectron2", "--out", str(tmp_path / "a.pkl")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_cli_convert_refuses_folder_and_uncreatable_outputs_and_text_checkpoints(tmp_path, encoder_r18, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert cli(["convert", str(encoder_r18), "--to", "detectron2", "--out", f"{folder}/"]) == 2
    assert f"--out {folder}/: is a folder; give a file name, e.g. {folder / 'backbone.pkl'}" in capsys.readouterr().err
    assert cli(["convert", str(encoder_r18), "--to", "torchvision", "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert cli(["convert", str(encoder_r18), "--to", "detectron2", "--out", str(blocker / "sub" / "w.pkl")]) == 2
    assert f"cannot create folder {blocker / 'sub'}: {blocker} is a file" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    assert cli(["convert", str(text), "--to", "detectron2", "--out", str(tmp_path / "w.pkl")]) == 2
    err = capsys.readouterr().err
    assert "a text file starting 'hello world', not a torch checkpoint" in err and "KeyError" not in err
    assert not (tmp_path / "w.pkl").exists()
