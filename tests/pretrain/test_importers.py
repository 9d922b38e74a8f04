"""Importing published checkpoints: one test per format on a synthetic file in the publisher's exact layout
(tests/ringbench_testing/published.py names the file each layout follows), refusals, safety, identity."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain import importers
from pretrain.checkpoint import UNKNOWN, load_encoder
from pretrain.importers import FORMATS, ImportRefused, import_checkpoint, import_identity
from ringbench_testing import published

REPO = Path(__file__).resolve().parents[2]

# format -> (builder kwargs, the key to rename / drop, where the state dict sits, expected arch, stem)
CASES = {
    "moco": ({"arch": "resnet50"}, "module.encoder_q.layer1.0.conv1.weight", ("state_dict",), "resnet50", "imagenet"),
    "moco_v3": ({}, "module.base_encoder.layer2.1.bn2.running_var", ("state_dict",), "resnet50", "imagenet"),
    "lemniscate": ({}, "module.layer3.0.downsample.0.weight", ("state_dict",), "resnet18", "imagenet"),
    "pycontrast": ({}, "module.encoder.bn1.weight", ("model",), "resnet18", "imagenet"),
    "swav": ({}, "module.layer4.2.conv3.weight", (), "resnet50", "imagenet"),
    "ring_official": ({}, "model.features.5.0.conv1.weight", ("state_dict",), "resnet18", "cifar"),
    "solo_learn": ({}, "backbone.layer1.1.bn1.bias", ("state_dict",), "resnet18", "imagenet"),
    "vissl": ({}, "_feature_blocks.layer3.5.bn3.weight", ("classy_state_dict", "base_model", "model", "trunk"),
              "resnet50", "imagenet"),
    "torchvision": ({}, "layer2.0.downsample.1.running_mean", (), "resnet18", "imagenet"),
    "simclr_converted": ({}, "layer4.0.conv2.weight", ("state_dict",), "resnet50", "imagenet"),
}


def _save(payload, path: Path) -> Path:
    torch.save(payload, path)
    return path


def _weights(payload, where):
    for step in where:
        payload = payload[step]
    return payload


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One synthetic file per format (built once: the ResNet-50 ones take a few seconds)."""
    folder = tmp_path_factory.mktemp("published")
    made = {}
    for name, (kwargs, *_rest) in CASES.items():
        payload, backbone = published.BUILDERS[name](**kwargs)
        made[name] = (_save(payload, folder / f"{name}.pth.tar"), payload, backbone)
    return made


def test_every_format_is_tested():
    assert set(CASES) | {"pycontrast_cmc", "cmc"} == set(FORMATS)


@pytest.mark.parametrize("name", list(CASES))
def test_import_reproduces_every_backbone_tensor(name, sources, tmp_path):
    path, _payload, backbone = sources[name]
    _kwargs, _key, _where, arch, stem = CASES[name]
    report = import_checkpoint(path, tmp_path / "encoder.pt")
    assert report.format == name and (report.arch, report.stem) == (arch, stem)
    loaded = load_encoder(tmp_path / "encoder.pt")
    state = loaded.backbone.state_dict()
    assert set(state) == set(backbone)
    for key, tensor in backbone.items():
        assert torch.equal(state[key], tensor), key
    meta = loaded.metadata
    assert meta["imported"]["format"] == name and meta["imported"]["mapping_version"] == importers.MAPPING_VERSION
    assert meta["imported"]["source_file"] == path.name and len(meta["imported"]["source_sha256"]) == 64
    assert all(meta[key] == UNKNOWN for key in ("method", "sampler", "pretrain_dataset", "epochs", "seed", "name"))
    normalisation = ([0.0] * 3, [1.0] * 3) if name == "simclr_converted" else (importers.IMAGENET_MEAN,
                                                                                importers.IMAGENET_STD)
    assert (meta["mean"], meta["std"], meta["input_view"]) == (*normalisation, "rgb")
    assert sum(report.heads.values()) > 0  # every format carries a head the import drops
    with torch.no_grad():  # the imported encoder computes what the source backbone computes
        images = torch.randn(2, 3, 32, 32)
        reference = published._resnet(arch)
        reference.fc = torch.nn.Identity()
        if stem == "cifar":
            reference.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            reference.maxpool = torch.nn.Identity()
        reference.load_state_dict(backbone)
        assert torch.allclose(loaded.model.eval()(images), reference.eval()(images), atol=1e-5)


def test_heads_are_reported_by_name_and_count(sources, tmp_path):
    report = import_checkpoint(sources["moco"][0], tmp_path / "moco.pt")
    encoder_k = len([k for k in sources["moco"][1]["state_dict"] if k.startswith("module.encoder_k.")])
    assert report.heads == {"key (momentum) encoder": encoder_k, "query projection head (fc)": 4,
                            "negative queue": 1, "queue pointer": 1}
    assert set(report.other_entries) == {"epoch", "arch", "optimizer"}
    text = "\n".join(report.lines())
    assert f"dropped key (momentum) encoder: {encoder_k} tensors" in text and "sampler=unknown" in text
    assert load_encoder(tmp_path / "moco.pt").metadata["imported"]["dropped"]["key (momentum) encoder"] == encoder_k


@pytest.mark.parametrize("name", list(CASES))
def test_renamed_missing_and_unknown_keys_are_refused_by_name(name, sources, tmp_path):
    _path, payload, _backbone = sources[name]
    _kwargs, key, where, *_ = CASES[name]
    renamed_key = key.replace("weight", "wieght").replace("running_", "runing_").replace("bias", "biass")
    assert renamed_key != key

    renamed = _shallow_copy(payload, where)
    weights = _weights(renamed, where)
    weights[renamed_key] = weights.pop(key)
    with pytest.raises(ImportRefused, match=f"(?s)({_escaped(renamed_key)}|{_escaped(_leaf(key))}).*"):
        import_checkpoint(_save(renamed, tmp_path / "renamed.pth"), tmp_path / "out.pt")

    missing = _shallow_copy(payload, where)
    del _weights(missing, where)[key]
    with pytest.raises(ImportRefused, match=f"missing.*{_escaped(_leaf(key))}"):
        import_checkpoint(_save(missing, tmp_path / "missing.pth"), tmp_path / "out.pt")

    extra = _shallow_copy(payload, where)
    extra_key = "module.mystery_head.weight"
    _weights(extra, where)[extra_key] = torch.zeros(3)
    with pytest.raises(ImportRefused, match=f"neither backbone nor a known head.*{_escaped(extra_key)}|"
                                            f"unexpected backbone tensor.*mystery_head"):
        import_checkpoint(_save(extra, tmp_path / "extra.pth"), tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def _shallow_copy(payload, where):
    """A copy whose containers along `where` are new dicts (tensors shared)."""
    top = dict(payload)
    node = top
    for step in where:
        node[step] = dict(node[step])
        node = node[step]
    return top


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def _leaf(key: str) -> str:
    """The torchvision name a source key maps to (what a refusal names for a missing backbone tensor)."""
    for prefix in ("module.encoder_q.", "module.base_encoder.", "module.encoder.", "backbone.", "_feature_blocks.",
                   "module."):
        if key.startswith(prefix):
            return key[len(prefix):]
    if key.startswith("model.features.5."):
        return "layer2." + key[len("model.features.5."):]
    return key


def test_an_unknown_top_level_entry_is_refused(sources, tmp_path):
    payload = dict(sources["moco"][1])
    payload["surprise"] = 3
    with pytest.raises(ImportRefused, match="unknown top-level entries surprise"):
        import_checkpoint(_save(payload, tmp_path / "x.pth.tar"), tmp_path / "out.pt")


def test_ambiguous_and_unknown_layouts_list_the_candidates(sources, tmp_path):
    payload = _shallow_copy(sources["moco"][1], ("state_dict",))
    payload["state_dict"]["module.base_encoder.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ImportRefused, match="matches several layouts \\(moco, moco_v3\\).*candidates: moco: .*vissl"):
        import_checkpoint(_save(payload, tmp_path / "both.pth.tar"), tmp_path / "out.pt")
    with pytest.raises(ImportRefused, match="no supported layout matches \\(top-level keys: weights\\); candidates:"
                                            ".*moco: state_dict with module.encoder_q"):
        import_checkpoint(_save({"weights": {"a": torch.zeros(1)}}, tmp_path / "odd.pt"), tmp_path / "out.pt")
    with pytest.raises(ImportRefused, match="not in the swav layout"):
        import_checkpoint(sources["moco"][0], tmp_path / "out.pt", format_name="swav")


def test_cmc_files_are_refused_with_the_reason(tmp_path):
    for builder, expected in ((published.cmc, "CMC model:"), (lambda: published.cmc(half=True), "width-scaled"),
                              (published.pycontrast_cmc, "layer1 is 32 channels wide")):
        payload, _ = builder()
        with pytest.raises(ImportRefused, match=f"refused: .*{expected}.*one channel of CIE L"):
            import_checkpoint(_save(payload, tmp_path / "cmc.pth"), tmp_path / "out.pt")


def test_solo_learn_cifar_stem_is_refused_and_ring_cifar_stem_is_kept(tmp_path):
    payload, _ = published.solo_learn(cifar=True)
    with pytest.raises(ImportRefused, match="solo-learn CIFAR run: .*padding 2"):
        import_checkpoint(_save(payload, tmp_path / "solo.ckpt"), tmp_path / "out.pt")
    payload, _ = published.ring_official(conv3x3=False, moco=False)
    report = import_checkpoint(_save(payload, tmp_path / "ring.ckpt"), tmp_path / "ring.pt")
    assert report.stem == "imagenet" and "key (momentum) encoder" not in report.heads
    assert load_encoder(tmp_path / "ring.pt").metadata["image_size"] == 224


def test_old_files_without_batchnorm_counters_are_filled_and_reported(tmp_path):
    payload, backbone = published.lemniscate()
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if not k.endswith("num_batches_tracked")}
    report = import_checkpoint(_save(payload, tmp_path / "old.pth.tar"), tmp_path / "old.pt")
    assert report.filled_counters == 20 and "set to 0" in "\n".join(report.lines())
    payload["state_dict"]["module.bn1.num_batches_tracked"] = torch.tensor(3)  # some but not all: refused
    with pytest.raises(ImportRefused, match="19 BatchNorm counters missing"):
        import_checkpoint(_save(payload, tmp_path / "half.pth.tar"), tmp_path / "half.pt")


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    payload, _ = published.moco(arch="resnet18")
    payload["optimizer"] = Payload()
    evil = _save(payload, tmp_path / "evil.pth.tar")
    with pytest.raises(ImportRefused, match="pickles exec, which no supported format is known to hold"):
        import_checkpoint(evil, tmp_path / "out.pt")
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file really is dangerous: an unsafe load runs its code
    assert marker.exists()


def test_lemniscate_module_object_is_read_as_data_without_running_it(sources, tmp_path):
    marker = tmp_path / "nce_ran.txt"
    published.NCEAverageStandIn.marker = str(marker)
    try:
        path = sources["lemniscate"][0]
        report = import_checkpoint(path, tmp_path / "ir.pt")
        assert not marker.exists()
        assert "lemniscate" in report.other_entries and report.heads == {"128-d embedding (fc)": 2}
        torch.load(path, weights_only=False)  # unsafely loaded, the pickled class's code does run
        assert marker.exists()
    finally:
        published.NCEAverageStandIn.marker = None


def test_namespace_is_admitted_only_for_the_formats_that_store_it(sources, tmp_path):
    payload = dict(sources["moco"][1])
    payload["epoch"] = argparse.Namespace(epoch=3)
    path = _save(payload, tmp_path / "ns.pth.tar")
    with pytest.raises(ImportRefused, match="pickles argparse.Namespace"):
        import_checkpoint(path, tmp_path / "out.pt", format_name="moco")
    assert importers.NAMESPACE in FORMATS["pycontrast"].allowed_globals


def test_stated_provenance_is_recorded_and_checked(sources, tmp_path):
    stated = {"method": "moco", "sampler": "nce", "pretrain_dataset": "imagenet", "epochs": "800", "name": "m"}
    import_checkpoint(sources["moco"][0], tmp_path / "m.pt", stated=stated)
    meta = load_encoder(tmp_path / "m.pt").metadata
    assert (meta["method"], meta["sampler"], meta["pretrain_dataset"], meta["epochs"], meta["name"]) == (
        "moco", "nce", "imagenet", 800, "m")
    assert meta["seed"] == UNKNOWN
    with pytest.raises(ImportRefused, match="--epochs 'many': expected an integer"):
        import_checkpoint(sources["moco"][0], tmp_path / "x.pt", stated={"epochs": "many"})


def test_same_file_twice_gives_the_same_encoder_and_a_new_mapping_version_a_new_identity(sources, tmp_path,
                                                                                            monkeypatch):
    first = import_checkpoint(sources["torchvision"][0], tmp_path / "a.pt")
    second = import_checkpoint(sources["torchvision"][0], tmp_path / "b.pt")
    assert first.encoder_sha256 == second.encoder_sha256
    meta = load_encoder(tmp_path / "a.pt").metadata
    identity = import_identity(meta)
    monkeypatch.setattr(importers, "MAPPING_VERSION", importers.MAPPING_VERSION + 1)
    import_checkpoint(sources["torchvision"][0], tmp_path / "c.pt")
    assert import_identity(load_encoder(tmp_path / "c.pt").metadata) != identity
    assert import_identity({"imported": dict(meta["imported"], source_sha256="0" * 64)}) != identity


def test_cli_prints_the_report_and_refuses_in_one_line(sources, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "cli.pt"
    done = subprocess.run([sys.executable, "-m", "pretrain.checkpoint", "import", str(sources["lemniscate"][0]),
                           "--out", str(out), "--method", "ir", "--epochs", "200", "--name", "insdis"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "as lemniscate" in done.stdout and "dropped 128-d embedding (fc): 2 tensors" in done.stdout
    assert load_encoder(out).metadata["name"] == "insdis"
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    done = subprocess.run([sys.executable, "-m", "pretrain.checkpoint", "import", str(bad), "--out",
                           str(tmp_path / "x.pt")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")


def test_imported_moco_resnet50_converts_to_detectron2_with_no_unused_key(sources, tmp_path):
    import numpy as np

    from transfer.detection.convert import (
        convert_checkpoint_to_detectron2,
        expected_detectron2_keys,
        read_detectron2_pickle,
    )

    import_checkpoint(sources["moco"][0], tmp_path / "moco.pt")
    model = read_detectron2_pickle(convert_checkpoint_to_detectron2(tmp_path / "moco.pt", tmp_path / "moco.pkl"))["model"]
    assert set(model) == set(expected_detectron2_keys("resnet50"))  # every key used by the R50 backbone, none left
    backbone = sources["moco"][2]
    assert np.array_equal(model["res2.0.conv1.weight"], backbone["layer1.0.conv1.weight"].numpy())
    assert np.array_equal(model["stem.conv1.norm.running_var"], backbone["bn1.running_var"].numpy())


def test_a_foreign_file_swapped_in_place_with_its_mtime_put_back_is_imported_anew(tmp_path):
    """cp -p / rsync -t / tar x keep size and mtime: the import cache must follow the content."""
    source = tmp_path / "moco_v2.pth.tar"
    torch.save(published.moco(arch="resnet18")[0], source)
    first = importers.encoder_for(source, cache_dir=tmp_path / "imports")
    stat = source.stat()
    swapped = published.moco(arch="resnet18")[0]
    for tensor in swapped["state_dict"].values():
        if tensor.is_floating_point():
            tensor.add_(1.0)
    torch.save(swapped, source)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size and source.stat().st_mtime_ns == stat.st_mtime_ns
    second = importers.encoder_for(source, cache_dir=tmp_path / "imports")
    assert second != first
    assert not torch.equal(load_encoder(second).backbone.conv1.weight, load_encoder(first).backbone.conv1.weight)
