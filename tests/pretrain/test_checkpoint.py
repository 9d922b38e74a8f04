import pytest
import torch

from pretrain.backbones import build_backbone
from pretrain.checkpoint import (
    REQUIRED_METADATA,
    CheckpointError,
    encoder_metadata,
    load_encoder,
    save_encoder,
    untrained_metadata,
)


def metadata(**changes):
    base = {
        "method": "moco", "sampler": "ring", "sampler_params": {"w_out": 0.1, "w_in": 0.1}, "arch": "resnet18",
        "stem": "cifar", "pretrain_dataset": "digits", "epochs": 1, "image_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "config": {"lr": 0.1}, "seed": 0, "code_version": "test",
    }
    return base | changes


def test_round_trip_preserves_weights_and_outputs(tmp_path):
    backbone = build_backbone("resnet18", "cifar")
    path = save_encoder(tmp_path / "e.pt", backbone, metadata())
    loaded = load_encoder(path)
    assert loaded.metadata["sampler_params"] == {"w_out": 0.1, "w_in": 0.1} and loaded.feature_dim == 512
    for key, value in backbone.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()
    assert torch.allclose(loaded.model(x), backbone(x))
    assert len(loaded.sha256) == 64


def _payload(path):
    return torch.load(path, weights_only=True)


def test_refuses_missing_and_unexpected_keys(tmp_path):
    path = save_encoder(tmp_path / "e.pt", build_backbone("resnet18", "cifar"), metadata())
    payload = _payload(path)
    del payload["state_dict"]["layer4.1.bn2.weight"]
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing keys.*layer4.1.bn2.weight"):
        load_encoder(tmp_path / "missing.pt")
    payload = _payload(path)
    payload["state_dict"]["fc.weight"] = torch.zeros(10, 512)
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected keys.*fc.weight"):
        load_encoder(tmp_path / "extra.pt")


def test_refuses_another_arch(tmp_path):
    path = save_encoder(tmp_path / "e.pt", build_backbone("resnet18", "cifar"), metadata())
    payload = _payload(path)
    payload["metadata"]["arch"] = "resnet50"
    torch.save(payload, tmp_path / "r50.pt")
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_encoder(tmp_path / "r50.pt")
    payload["metadata"]["arch"] = "vit_b16"
    torch.save(payload, tmp_path / "vit.pt")
    with pytest.raises(CheckpointError, match="arch 'vit_b16'"):
        load_encoder(tmp_path / "vit.pt")


def test_refuses_no_metadata_and_foreign_files(tmp_path):
    path = save_encoder(tmp_path / "e.pt", build_backbone("resnet18", "cifar"), metadata())
    payload = _payload(path)
    del payload["metadata"]
    torch.save(payload, tmp_path / "nometa.pt")
    with pytest.raises(CheckpointError, match="no metadata"):
        load_encoder(tmp_path / "nometa.pt")
    torch.save(build_backbone("resnet18", "cifar").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a RingBench encoder"):
        load_encoder(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="metadata lacks seed"):
        save_encoder(tmp_path / "bad.pt", build_backbone("resnet18", "cifar"),
                     {k: v for k, v in metadata().items() if k != "seed"})


def test_refuses_truncated_file(tmp_path):
    path = save_encoder(tmp_path / "e.pt", build_backbone("resnet18", "cifar"), metadata())
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_encoder(tmp_path / "cut.pt")


def test_a_foreign_or_random_file_is_named_without_advice_to_load_it_unsafely(tmp_path):
    import os

    import torchvision

    torch.save(torchvision.models.resnet18(), tmp_path / "model.pt")  # a whole pickled model
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as whole:
        load_encoder(tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as random_bytes:
        load_encoder(tmp_path / "random.pt")
    assert "model.pt: not a RingBench encoder: it pickles the Python object torchvision.models.resnet.ResNet" \
        in str(whole.value)
    assert "random.pt: not a readable torch checkpoint" in str(random_bytes.value)
    for message in (str(whole.value), str(random_bytes.value)):
        assert "weights_only=False" not in message and "weights_only` set to `False" not in message
        assert "python -m pretrain.train" in message and "save_encoder" in message


def test_encoder_metadata_is_built_by_one_function(tmp_path):
    metadata = encoder_metadata(method="moco", sampler="ring", sampler_params={"w_out": 0.1}, arch="resnet18",
                                stem="imagenet", pretrain_dataset="digits", epochs=3, image_size=32, mean=(0.5,) * 3,
                                std=(0.25,) * 3, seed=2, input_view="rgb")
    assert set(REQUIRED_METADATA) - {"code_version"} <= set(metadata) and metadata["input_view"] == "rgb"
    assert metadata["mean"] == [0.5] * 3 and metadata["config"] == {}
    control = untrained_metadata(arch="resnet18", stem="imagenet", image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    assert (control["method"], control["sampler"], control["epochs"], control["pretrain_dataset"]) == (
        "random", "none", 0, "none")
    loaded = load_encoder(save_encoder(tmp_path / "c.pt", build_backbone("resnet18", "imagenet"), control))
    assert loaded.metadata["code_version"] and loaded.metadata["image_size"] == 16


def test_cmc_encoder_on_rgb_needs_the_explicit_override(tmp_path):
    from cmc_encoders import expected_features, write_cmc_encoder, write_old_cmc_encoder

    old = write_old_cmc_encoder(tmp_path / "old_cmc.pt")
    with pytest.raises(CheckpointError, match="old_cmc.pt: a CMC encoder file without metadata\\['input_view'\\].*"
                                              "force_rgb_input=true cmc_features=l"):
        load_encoder(old)
    with pytest.raises(CheckpointError, match="force_rgb_input feeds RGB to the exported backbone alone"):
        load_encoder(old, force_rgb_input=True)  # the default concat cannot be fed RGB
    x = torch.randn(3, 3, 8, 8)
    forced = load_encoder(old, cmc_features="l", force_rgb_input=True)
    assert forced.view_info() == {"input_view": "rgb", "cmc_features": "l", "force_rgb_input": True}
    assert torch.allclose(forced.model(x), expected_features(x, rgb=True), atol=1e-5)
    assert load_encoder(old, cmc_features=None).model is None  # metadata only, for planning
    with pytest.raises(CheckpointError, match="a CMC encoder must record its input_view"):
        save_encoder(tmp_path / "x.pt", build_backbone("resnet18", "imagenet"), metadata(method="cmc"))

    new = write_cmc_encoder(tmp_path / "cmc.pt")
    for which in ("concat", "l", "ab"):
        loaded = load_encoder(new, cmc_features=which)
        with torch.no_grad():
            assert torch.allclose(loaded.model(x), expected_features(x, which), atol=1e-5), which
        assert loaded.feature_dim == (1024 if which == "concat" else 512)
    default = load_encoder(new)
    assert default.view_info() == {"input_view": "lightness+lab_ab", "cmc_features": "concat", "force_rgb_input": False}
    with torch.no_grad():
        assert not torch.allclose(load_encoder(new, cmc_features="l").model(x), expected_features(x, rgb=True), atol=1e-2)
        assert torch.allclose(load_encoder(new, cmc_features="l", force_rgb_input=True).model(x),
                              expected_features(x, rgb=True), atol=1e-5)
    assert default.backbone_view == "lightness" and default.backbone.conv1.in_channels == 3
    l_only = _payload(new)
    del l_only["metadata"]["extra_encoders"], l_only["extra_state_dicts"]
    torch.save(l_only, tmp_path / "l_only.pt")
    with pytest.raises(CheckpointError, match="cmc_features=ab needs the ab encoder, which this file does not hold"):
        load_encoder(tmp_path / "l_only.pt", cmc_features="ab")
    assert load_encoder(tmp_path / "l_only.pt", cmc_features="l").view_info()["input_view"] == "lightness"


def test_files_without_input_view_keep_rgb_for_other_methods(tmp_path):
    backbone = build_backbone("resnet18", "cifar")
    path = save_encoder(tmp_path / "e.pt", backbone, metadata())
    payload = _payload(path)
    assert payload["metadata"]["input_view"] == "rgb"
    del payload["metadata"]["input_view"]
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_encoder(tmp_path / "old.pt")
    assert loaded.model is loaded.backbone and loaded.view_info()["input_view"] == "rgb"
    assert loaded.view_info()["cmc_features"] is None
    payload["metadata"]["input_view"] = "lab_ab"
    torch.save(payload, tmp_path / "ab.pt")
    with pytest.raises(CheckpointError, match="must take a 3-channel view, not 'lab_ab'"):
        load_encoder(tmp_path / "ab.pt")
