"""The speed options of pretraining: CPU defaults unchanged, uint8 loaders deterministic and resumable,
torch.compile and channels_last invisible to state, resume and export."""

import json

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from pretrain.checkpoint import load_encoder, plain_module, save_encoder
from pretrain.config import ConfigError
from pretrain.data import PRETRAIN_SPLIT, MultiViewDataset, dataset_stats, open_dataset, pretrain_transform
from pretrain.methods import MethodSettings, build_method
from pretrain.recipes import recipe_config
from pretrain.samplers import build_sampler
from pretrain.train import COMPILE_MIN_STEPS, Trainer, lr_at, resolve_loader, resolve_switch

TINY = {"data.image_size": 16, "optim.batch_size": 16, "optim.max_steps_per_epoch": 2, "knn_every": 0,
        "method.num_negatives": 64, "method.queue_size": 64, "data.workers": 0}


def tiny_config(recipe, **changes):
    return recipe_config(recipe, TINY | {"optim.epochs": 1} | changes)


def reference_state(config):
    """One epoch of the training loop as it was before the speed options (PIL views, fp32, contiguous)."""
    data, optim = config.data, config.optim
    torch.manual_seed(config.seed)
    mean, std = dataset_stats(data.name)
    images = open_dataset(data.name, None, PRETRAIN_SPLIT[data.name], image_size=data.image_size)
    sampler = config.build_sampler()
    method = build_method(config.method.name, config.method.settings(mean, std), sampler, len(images), seed=config.seed)
    parameters = [p for name in method.trainable_encoders() for p in getattr(method, name).parameters()]
    optimizer = torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    generator = torch.Generator().manual_seed(config.seed * 1000 + 1)
    torch.manual_seed(config.seed * 1000)
    transform = pretrain_transform(data.image_size, mean, std, data.crop_min_scale, data.hflip,
                                   augmentation=config.resolved_augmentation())
    views = MultiViewDataset(images, transform, method.num_views)
    data_sampler = DistributedSampler(views, num_replicas=1, rank=0, shuffle=True, seed=config.seed, drop_last=True)
    loader = DataLoader(views, batch_size=optim.batch_size, sampler=data_sampler, drop_last=True)
    sampler.set_epoch(0)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(config, 0)
    method.train()
    data_sampler.set_epoch(0)
    losses = []
    for step, (*batch_views, index) in enumerate(loader):
        if step >= optim.max_steps_per_epoch:
            break
        loss = method.loss(batch_views, index, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step()
        losses.append(loss.item())
    return method.state_dict(), losses


@pytest.mark.parametrize("recipe", ["digits_moco_ring", "digits_cmc_nce"])
def test_cpu_defaults_are_bit_identical_to_the_plain_loop(tmp_path, recipe):
    config = tiny_config(recipe)
    trainer = Trainer(config, tmp_path, show_progress=False)
    assert (trainer.loader_kind, trainer.channels_last, trainer.compiled) == ("pil", False, False)
    trainer.fit()
    expected, losses = reference_state(config)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["loss"] == sum(losses) / len(losses)
    state = trainer.method.state_dict()
    assert state.keys() == expected.keys()
    for key in state:
        assert torch.equal(state[key], expected[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["cpu", "gpu"])
def test_uint8_loaders_resume_exactly_on_cpu(tmp_path, loader):
    config = tiny_config("digits_moco_ring", **{"optim.epochs": 2, "loader": loader})
    straight = Trainer(config, tmp_path / "straight", show_progress=False)
    assert straight.loader_kind == loader
    straight.fit()
    Trainer(config, tmp_path / "split", show_progress=False).fit(until_epoch=1)
    resumed = Trainer(config, tmp_path / "split", resume=True, show_progress=False)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    pil = Trainer(tiny_config("digits_moco_ring", **{"optim.epochs": 2, "loader": "pil"}), tmp_path / "pil",
                  show_progress=False)
    pil.fit()
    assert not torch.equal(pil.method.state_dict()["queue"], a["queue"])  # another input path, other views


def test_speed_options_resolve_per_device_and_validate():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    digits = open_dataset("digits", split="test")
    assert resolve_loader("auto", cpu, digits) == "pil" and resolve_loader("auto", cuda, digits) == "cpu"

    class Folder:
        files = ["a.JPEG"]

    assert resolve_loader("auto", cuda, Folder()) == "gpu" and resolve_loader("cpu", cuda, Folder()) == "cpu"
    assert not resolve_switch("auto", cpu) and resolve_switch("auto", cuda) and resolve_switch("on", cpu)
    assert not resolve_switch("auto", cuda, default_on_cuda=False) and not resolve_switch("off", cuda)
    assert COMPILE_MIN_STEPS >= 1000  # compile's warm-up (about a minute) must be repaid
    for key, value, valid in (("loader", "dali", "auto, pil, cpu, gpu"), ("compile", "yes", "auto, on, off"),
                              ("channels_last", "1", "auto, on, off")):
        with pytest.raises(ConfigError, match=f"{key} '{value}'; valid: {valid}"):
            recipe_config("digits_moco_ring", {key: value}).validate()


def _moco(seed=0):
    torch.manual_seed(seed)
    settings = MethodSettings(arch="resnet18", stem="cifar", queue_size=32)
    return build_method("moco", settings, build_sampler("ring", w_out=0.5, w_in=0.1, anneal="constant"), 64, seed=seed)


def test_compiled_encoders_leave_state_loss_and_export_plain(tmp_path):
    views = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    index = torch.arange(4)
    plain, compiled = _moco(), _moco()
    compiled.compile_encoders(lambda module: torch.compile(module, backend="eager"))
    assert type(compiled._forward_encoder).__name__ == "OptimizedModule"
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    torch.manual_seed(1)
    expected = plain.loss(views, index, torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    got = compiled.loss(views, index, torch.Generator().manual_seed(2))
    assert torch.allclose(got, expected, atol=1e-5)
    # a compiled backbone handed to the export is stored as the plain torchvision state dict
    backbone = compiled.export_backbone()
    wrapped = torch.compile(backbone, backend="eager")
    assert plain_module(wrapped) is backbone and next(iter(wrapped.state_dict())).startswith("_orig_mod.")
    metadata = {"method": "moco", "sampler": "ring", "sampler_params": {}, "arch": "resnet18", "stem": "cifar",
                "pretrain_dataset": "digits", "epochs": 1, "image_size": 16, "mean": [0.5] * 3, "std": [0.2] * 3,
                "config": {}, "seed": 0}
    loaded = load_encoder(save_encoder(tmp_path / "encoder.pt", wrapped, metadata))
    for key, value in backbone.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_channels_last_encoders_compute_the_same_and_export_contiguous(tmp_path):
    views = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plain, fast = _moco(), _moco()
    fast.to(memory_format=torch.channels_last)
    assert fast.encoder.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    fast_views = [view.contiguous(memory_format=torch.channels_last) for view in views]
    torch.manual_seed(1)
    expected = plain.loss(views, torch.arange(4), torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    got = fast.loss(fast_views, torch.arange(4), torch.Generator().manual_seed(2))
    assert torch.allclose(got, expected, atol=1e-4)
    metadata = {"method": "moco", "sampler": "ring", "sampler_params": {}, "arch": "resnet18", "stem": "cifar",
                "pretrain_dataset": "digits", "epochs": 1, "image_size": 16, "mean": [0.5] * 3, "std": [0.2] * 3,
                "config": {}, "seed": 0}
    path = save_encoder(tmp_path / "encoder.pt", fast.export_backbone(), metadata)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(tensor.is_contiguous() for tensor in stored.values())


def test_uint8_extraction_is_bit_identical_to_the_float_path_on_cpu():
    from pretrain.backbones import build_backbone
    from pretrain.data import eval_transform, eval_transform_uint8
    from transfer.features import extract_features

    images = open_dataset("digits", split="test", image_size=32)
    mean, std = dataset_stats("digits")
    torch.manual_seed(0)
    model = build_backbone("resnet18", "imagenet")
    rows = range(20)
    floats = [torch.stack([eval_transform(32, mean, std)(images.image(i)) for i in rows])]
    pixels = [torch.stack([eval_transform_uint8(32)(images.image(i)) for i in rows])]
    assert pixels[0].dtype == torch.uint8
    expected = extract_features(model, floats, "cpu")
    got = extract_features(model, pixels, "cpu", mean=mean, std=std)
    assert got.shape == (20, 512) and (got == expected).all()
    with pytest.raises(ValueError, match="need the encoder's mean and std"):
        extract_features(model, pixels, "cpu")
