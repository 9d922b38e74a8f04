"""Synthetic published checkpoints: random weights in exactly the nesting and key names each publishing
repository writes. Each builder names the file it follows; none of their code is used.

Every builder returns (payload, backbone) where `backbone` maps torchvision names to the tensors the
import must reproduce one by one.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections import OrderedDict

import torch
import torchvision
from torch import nn


def _resnet(arch: str, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    with torch.no_grad():  # random BatchNorm statistics too, so a dropped buffer would show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(seed + 7)
    return model


def _backbone_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _prefixed(prefix: str, state: dict) -> OrderedDict:
    return OrderedDict((prefix + key, value) for key, value in state.items())


def _sgd_state(model: nn.Module) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    return optimizer.state_dict()


def moco(arch: str = "resnet50", mlp: bool = True):
    """facebookresearch/moco main_moco.py save_checkpoint: {epoch, arch, state_dict, optimizer}; state_dict
    of the DDP-wrapped moco/builder.py MoCo: encoder_q / encoder_k (fc replaced by Linear-ReLU-Linear for
    v2's mlp), queue (dim x K), queue_ptr. salesforce/PCL main_pcl.py writes the same."""
    query, key = _resnet(arch, 128, seed=1), _resnet(arch, 128, seed=2)
    if mlp:
        width = query.fc.weight.shape[1]
        query.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), query.fc)
        key.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), key.fc)
    state = _prefixed("module.encoder_q.", query.state_dict()) | _prefixed("module.encoder_k.", key.state_dict())
    state["module.queue"] = torch.randn(128, 256)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": arch, "state_dict": state, "optimizer": _sgd_state(query)}, _backbone_of(query)


def moco_v3():
    """facebookresearch/moco-v3 main_moco.py: {epoch, arch, state_dict, optimizer, scaler}; moco/builder.py
    MoCo_ResNet: base_encoder / momentum_encoder whose fc is a 2-layer MLP (Linear, BN, ReLU, Linear,
    BN without affine) and a predictor MLP. ResNet-50 is the released architecture."""
    def mlp(in_dim, hidden, out):
        return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                             nn.Linear(hidden, out, bias=False), nn.BatchNorm1d(out, affine=False))

    base, momentum = _resnet("resnet50", seed=3), _resnet("resnet50", seed=4)
    base.fc, momentum.fc = mlp(2048, 64, 32), mlp(2048, 64, 32)
    predictor = mlp(32, 64, 32)
    state = (_prefixed("module.base_encoder.", base.state_dict())
             | _prefixed("module.momentum_encoder.", momentum.state_dict())
             | _prefixed("module.predictor.", predictor.state_dict()))
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    return ({"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": _sgd_state(base),
             "scaler": scaler}, _backbone_of(base))


class NCEAverageStandIn(nn.Module):
    """Pickled under lemniscate's name `lib.NCEAverage.NCEAverage` (see `lemniscate`); rebuilding it runs
    code (writes `marker`), as unpickling any real class may."""

    marker = None

    def __init__(self, memory_size: int = 16, dim: int = 128):
        super().__init__()
        self.register_buffer("params", torch.tensor([4096.0, 0.07, -1.0, 0.5]))
        self.register_buffer("memory", torch.rand(memory_size, dim))

    def __setstate__(self, state):
        if NCEAverageStandIn.marker is not None:
            with open(NCEAverageStandIn.marker, "w") as handle:
                handle.write("code from a checkpoint ran")
        super().__setstate__(state)


def _publish_as(module_name: str, name: str, cls: type) -> None:
    """Make `cls` picklable (and unpicklable, unsafely) under `module_name.name`, as the publisher's class."""
    parent = module_name.split(".")[0]
    for path in (parent, module_name):
        sys.modules.setdefault(path, types.ModuleType(path))
    setattr(sys.modules[module_name], name, cls)
    setattr(sys.modules[parent], module_name.split(".")[-1], sys.modules[module_name])
    cls.__module__, cls.__qualname__ = module_name, name


def lemniscate(arch: str = "resnet18"):
    """zhirongw/lemniscate.pytorch main.py save_checkpoint: {epoch, arch, state_dict, lemniscate, best_prec1,
    optimizer}; DataParallel's `module.` prefix over models/resnet.py (torchvision names, fc = the 128-d
    embedding); `lemniscate` is the NCEAverage module object itself (lib/NCEAverage.py)."""
    model = _resnet(arch, 128, seed=5)
    _publish_as("lib.NCEAverage", "NCEAverage", NCEAverageStandIn)
    return ({"epoch": 200, "arch": arch, "state_dict": _prefixed("module.", model.state_dict()),
             "lemniscate": NCEAverageStandIn(), "best_prec1": 0.42, "optimizer": _sgd_state(model)},
            _backbone_of(model))


def pycontrast(arch: str = "resnet18", head: str = "mlp"):
    """HobbitLong/PyContrast learning/contrast_trainer.py save: {model, contrast, optimizer, epoch} (+ model_ema
    for MoCo memories), model = DDP(RGBSingleHead) from networks/build_backbone.py: module.encoder (the
    ResNet of networks/resnet.py, no fc) and module.head; released files add the options as `opt`."""
    encoder = _resnet(arch, seed=6)
    width = encoder.fc.in_features
    encoder.fc = nn.Identity()
    heads = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 128)) if head == "mlp" else \
        nn.Sequential(nn.Linear(width, 128))
    state = _prefixed("module.encoder.", encoder.state_dict()) | _prefixed("module.head.", heads.state_dict())
    contrast = {"memory": torch.rand(32, 128), "params": torch.tensor([4096.0, 0.07]), "index": torch.tensor(0)}
    opt = argparse.Namespace(arch=arch, head=head, mem="bank", modal="RGB", feat_dim=128, epochs=200)
    return ({"model": state, "contrast": contrast, "optimizer": _sgd_state(encoder), "epoch": 200, "opt": opt},
            _backbone_of(encoder))


def pycontrast_cmc():
    """PyContrast's CMCSingleHead: module.encoder1 (1 channel, L) and module.encoder2 (2 channels, ab), both
    ResNets at `width` 0.5 for resnet50 (the tensors that tell them apart; the rest is not needed)."""
    state = OrderedDict()
    for name, channels in (("encoder1", 1), ("encoder2", 2)):
        state[f"module.{name}.conv1.weight"] = torch.randn(64, channels, 7, 7)
        state[f"module.{name}.layer1.0.conv1.weight"] = torch.randn(32, 64, 1, 1)
    return {"model": state, "epoch": 200, "opt": argparse.Namespace(modal="CMC")}, {}


def cmc(half: bool = False):
    """HobbitLong/CMC train_CMC.py: {opt, model, optimizer, contrast, epoch}; model = DataParallel(ResNetV2) of
    models/resnet.py: l_to_ab (in_channel 1) and ab_to_l (in_channel 2), each with a 128-d fc."""
    base = 32 if half else 64
    state = OrderedDict()
    for name, channels in (("l_to_ab", 1), ("ab_to_l", 2)):
        state[f"module.{name}.conv1.weight"] = torch.randn(64, channels, 7, 7)
        state[f"module.{name}.layer1.0.conv1.weight"] = torch.randn(base, 64, 1, 1)
    return {"opt": argparse.Namespace(model="resnet50"), "model": state, "contrast": {}, "epoch": 240}, {}


def swav(multi_prototypes: bool = False):
    """facebookresearch/swav released *_pretrain.pth.tar: the state dict of the DDP-wrapped src/resnet50.py
    ResNet itself (module. prefix; torchvision names for the trunk), projection_head (Linear, BN, ReLU,
    Linear) and prototypes (a Linear, or MultiPrototypes' prototypes0.. for DeepCluster-v2)."""
    model = _resnet("resnet50", seed=8)
    model.fc = nn.Identity()
    head = nn.Sequential(nn.Linear(2048, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    state = _prefixed("module.", model.state_dict()) | _prefixed("module.projection_head.", head.state_dict())
    if multi_prototypes:
        for index in range(3):
            state[f"module.prototypes.prototypes{index}.weight"] = torch.randn(30, 16)
    else:
        state["module.prototypes.weight"] = torch.randn(30, 16)
    return state, _backbone_of(model)


def ring_official(arch: str = "resnet18", conv3x3: bool = True, moco: bool = True):
    """mhw32/contrastive-ring-public: a Lightning checkpoint of src/systems/systems.py PretrainMoCoSystem:
    model = src/models/resnet2.py CustomResNet (features = the torchvision ResNet's children without fc;
    conv3x3 swaps conv1 for 3x3 stride 1 and drops the max-pool; l1, l2 projection), model_k, the
    memory_bank (src/objectives/memory.py `_bank`), queue and queue_ptr."""
    def custom(seed):
        resnet = _resnet(arch, seed=seed)
        if conv3x3:
            resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            resnet.maxpool = nn.Identity()
        features = nn.Sequential(*list(resnet.children())[:-1])
        width = resnet.fc.in_features
        module = nn.Module()
        module.features, module.l1, module.l2 = features, nn.Linear(width, width), nn.Linear(width, 128)
        return module, resnet

    model, resnet = custom(9)
    state = _prefixed("model.", model.state_dict()) | _prefixed("memory_bank.", {"_bank": torch.rand(64, 128)})
    if moco:
        state |= _prefixed("model_k.", custom(10)[0].state_dict())
        state["queue"] = torch.randn(256, 128)
        state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    payload = {"epoch": 199, "global_step": 1000, "pytorch-lightning_version": "0.7.6",
               "checkpoint_callback_best": 0.0, "optimizer_states": [_sgd_state(model)], "lr_schedulers": [],
               "state_dict": state}
    return payload, _backbone_of(resnet)


def solo_learn(arch: str = "resnet18", cifar: bool = False):
    """vturrisi/solo-learn: a Lightning checkpoint of a solo/methods/base.py BaseMomentumMethod (MoCo v2+):
    backbone (torchvision ResNet, fc = Identity; CIFAR: conv1 3x3 stride 1 padding 2, no max-pool),
    classifier (online linear), projector, momentum_backbone, momentum_projector, queue."""
    backbone = _resnet(arch, seed=11)
    backbone.fc = nn.Identity()
    if cifar:
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        backbone.maxpool = nn.Identity()
    width = 512 if arch == "resnet18" else 2048
    projector = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 32))
    momentum = _resnet(arch, seed=12)
    momentum.fc = nn.Identity()
    state = (_prefixed("backbone.", backbone.state_dict())
             | _prefixed("classifier.", nn.Linear(width, 100).state_dict())
             | _prefixed("projector.", projector.state_dict())
             | _prefixed("momentum_backbone.", momentum.state_dict())
             | _prefixed("momentum_projector.", projector.state_dict()))
    state["queue"] = torch.randn(2, 32, 64)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    payload = {"epoch": 399, "global_step": 5000, "pytorch-lightning_version": "2.0.2", "state_dict": state,
               "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 399}}}},
               "callbacks": {}, "optimizer_states": [_sgd_state(backbone)], "lr_schedulers": [{"last_epoch": 5}]}
    return payload, _backbone_of(backbone)


def vissl():
    """facebookresearch/vissl checkpoints (extra_scripts/convert_vissl_to_torchvision.py reads them):
    classy_state_dict.base_model.model.trunk with `_feature_blocks.` before torchvision names, heads beside."""
    trunk = _resnet("resnet50", seed=13)
    heads = {"0.clf.0.weight": torch.randn(10, 2048), "0.clf.0.bias": torch.randn(10)}
    model = {"trunk": _prefixed("_feature_blocks.", _backbone_of(trunk)), "heads": heads}
    payload = {"phase_idx": 104, "iteration": 5000, "train_phase_idx": 104, "loss": {},
               "classy_state_dict": {"base_model": {"model": model, "meta": {}}}}
    return payload, _backbone_of(trunk)


def torchvision_supervised(arch: str = "resnet18"):
    """A torchvision ResNet state dict (torchvision/models/resnet.py): plain names and the 1000-way fc."""
    model = _resnet(arch, seed=14)
    return model.state_dict(), _backbone_of(model)


def simclr_converted():
    """tonylins/simclr-converter convert.py: {'state_dict': resnet50x1().state_dict()} with torchvision names
    and the supervised head as fc."""
    model = _resnet("resnet50", seed=15)
    return {"state_dict": model.state_dict()}, _backbone_of(model)


BUILDERS = {"moco": moco, "moco_v3": moco_v3, "lemniscate": lemniscate, "pycontrast": pycontrast,
            "swav": swav, "ring_official": ring_official, "solo_learn": solo_learn, "vissl": vissl,
            "torchvision": torchvision_supervised, "simclr_converted": simclr_converted}
