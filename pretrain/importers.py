"""Import published checkpoints (MoCo, InsDis, PyContrast, SwAV, PCL, the official Ring code, solo-learn,
VISSL, torchvision) into RingBench encoder files, exactly and with their provenance.

Each format is one registered class: how it is recognised from its key layout, where its backbone sits,
how its keys map to torchvision names, and which leftovers are known heads of that format. After the
map, the backbone key set must equal the architecture's (with shapes) and every leftover must be a known
head; anything else refuses the file, naming the keys. Files are opened with torch's weights-only
unpickler, admitting only the harmless globals a supported format is known to hold.

    python -m pretrain.checkpoint import moco_v2_800ep_pretrain.pth.tar --out moco_v2.pt \\
        --method moco --pretrain-dataset imagenet --epochs 800 --name moco_v2_800ep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

import torch

from pretrain.backbones import ARCHS, STEMS, build_backbone
from pretrain.checkpoint import FORMAT, UNKNOWN, CheckpointError, save_encoder
from ringbench_common.atomic_files import file_sha256

# Bump when any format's key map, head list or recorded metadata changes: imported cells get new ids.
MAPPING_VERSION = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # every supported format trains on RGB with ImageNet statistics
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGE_SIZE_BY_STEM = {"imagenet": 224, "cifar": 32}
NUM_BATCHES_TRACKED = "num_batches_tracked"
STATED_FIELDS = ("method", "sampler", "pretrain_dataset", "epochs", "name")


class ImportRefused(CheckpointError):
    """A foreign checkpoint that cannot be imported exactly; the message names the file and the keys."""


# ----------------------------------------------------------------------------------------------------
# Safe loading


class OpaquePickledObject:
    """Stands in for a class a published file pickles whole (lemniscate's NCEAverage): the weights-only
    unpickler builds this instead, keeping the object's state as data and never importing or running
    the original class."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _no_backend(*_args: Any) -> None:
    """Stands in for the function old PyTorch (< 1.0) pickled as every module's `_backend`."""
    return None


@dataclass(frozen=True)
class AllowedGlobal:
    """A global a format's files are known to pickle, and what the weights-only unpickler builds for it."""

    name: str  # module.qualname as the pickle spells it
    stand_in: Any  # the harmless object built instead (the real class only where it is plain data)
    why: str


NAMESPACE = AllowedGlobal("argparse.Namespace", argparse.Namespace, "the training options (`opt`), plain data")


def _opaque(name: str, why: str) -> AllowedGlobal:
    return AllowedGlobal(name, OpaquePickledObject, f"{why}, read as data without running its class")


def safe_load(path: Path, allowed: list[AllowedGlobal]) -> Any:
    """torch.load with the weights-only unpickler and only `allowed` admitted; anything else is refused,
    naming the class the file asks for."""
    entries = [(item.stand_in, item.name) for item in allowed]
    try:
        with torch.serialization.safe_globals(entries):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign global, a truncated file, not a torch file at all
        text = str(error)
        foreign = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"unrecognized function (\S+)", text)
        if foreign:
            admitted = ", ".join(sorted({item.name for item in allowed})) or "none"
            raise ImportRefused(
                f"{path}: pickles {foreign.group(1)}, which no supported format is known to hold; refused "
                f"rather than run code from a downloaded file (admitted here: {admitted})") from None
        first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
        raise ImportRefused(f"{path}: not a readable torch checkpoint ({first})") from None


# ----------------------------------------------------------------------------------------------------
# Formats


@dataclass
class Mapped:
    """A format's reading of one file: the backbone under torchvision names and what was left over."""

    backbone: dict[str, torch.Tensor]
    heads: Counter  # head description -> tensor count
    unknown: list[str]  # source keys that are neither backbone nor a known head
    other_entries: dict[str, str]  # top-level entries besides the weights -> what they are


class CheckpointFormat:
    """One published layout. Subclasses set the class attributes and, where needed, override `weights`,
    `backbone_name` and `refusal`."""

    name: ClassVar[str]
    repository: ClassVar[str]
    anchor: ClassVar[str]  # the file in `repository` that writes this layout
    releases: ClassVar[str]  # the released files it covers (documentation)
    signature: ClassVar[str]  # how it is recognised (for the candidate list)
    backbone_prefix: ClassVar[str] = ""
    heads: ClassVar[tuple[tuple[str, str], ...]] = ()  # (regex on source keys, description)
    entries: ClassVar[dict[str, str]] = {}  # known top-level entries besides the weights
    allowed_globals: ClassVar[tuple[AllowedGlobal, ...]] = ()
    stems: ClassVar[tuple[str, ...]] = ("imagenet",)
    mean: ClassVar[list[float]] = IMAGENET_MEAN  # the publisher's input normalisation (RGB, 0-1 pixels)
    std: ClassVar[list[float]] = IMAGENET_STD

    def matches(self, payload: Any) -> bool:
        raise NotImplementedError

    def weights(self, payload: Mapping) -> dict[str, Any]:
        """source key -> tensor: the model state dict(s) of the file."""
        return dict(payload["state_dict"])

    def weights_entries(self) -> tuple[str, ...]:
        """The top-level entries `weights` reads; () when the whole file is one state dict."""
        return ("state_dict",)

    # the publisher's own classifier or projection under the torchvision name `fc`: a head, never backbone
    fc_is_head: ClassVar[bool] = False

    def backbone_name(self, key: str) -> str | None:
        """The torchvision name of a backbone tensor, None for anything else."""
        if self.backbone_prefix and key.startswith(self.backbone_prefix):
            name = key[len(self.backbone_prefix):]
            return None if self.fc_is_head and name.startswith("fc.") else name
        return None

    def refusal(self, payload: Mapping) -> str | None:
        """Why a file in this layout cannot be imported at all (None: it can)."""
        return None

    def map(self, payload: Mapping) -> Mapped:
        backbone: dict[str, torch.Tensor] = {}
        heads: Counter = Counter()
        unknown: list[str] = []
        for key, value in self.weights(payload).items():
            name = self.backbone_name(key)
            if name is not None:
                backbone[name] = value
                continue
            head = next((description for pattern, description in self.heads if re.fullmatch(pattern, key)), None)
            if head is None:
                unknown.append(key)
            else:
                heads[head] += 1
        flat = not self.weights_entries()
        others = {} if flat else {key: self.entries.get(key, "") for key in payload if key not in self.weights_entries()}
        return Mapped(backbone, heads, unknown, others)


FORMATS: dict[str, type[CheckpointFormat]] = {}


def register(cls: type[CheckpointFormat]) -> type[CheckpointFormat]:
    FORMATS[cls.name] = cls
    return cls


def _nested(payload: Any, *path: str) -> Any:
    for step in path:
        if not isinstance(payload, Mapping) or step not in payload:
            return None
        payload = payload[step]
    return payload


def _has_prefix(weights: Any, prefix: str) -> bool:
    return isinstance(weights, Mapping) and any(isinstance(k, str) and k.startswith(prefix) for k in weights)


def _flat_tensors(payload: Any) -> bool:
    return isinstance(payload, Mapping) and bool(payload) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())


LIGHTNING_ENTRIES = {
    "epoch": "epoch", "global_step": "global step", "pytorch-lightning_version": "Lightning version",
    "optimizer_states": "optimizer state", "lr_schedulers": "learning-rate scheduler state",
    "callbacks": "callback state", "loops": "training-loop state", "hparams_name": "hyper-parameter name",
    "hyper_parameters": "hyper-parameters", "checkpoint_callback_best_model_score": "best score",
    "checkpoint_callback_best_model_path": "best checkpoint path", "checkpoint_callback_best": "best score",
    "native_amp_scaling_state": "mixed-precision scaler state", "amp_scaling_state": "mixed-precision state",
    "MixedPrecision": "mixed-precision state",
}
TRAINING_ENTRIES = {"epoch": "epoch", "arch": "architecture name", "optimizer": "optimizer state"}


@register
class MocoFormat(CheckpointFormat):
    name = "moco"
    repository = "facebookresearch/moco, salesforce/PCL"
    anchor = "main_moco.py (save_checkpoint), moco/builder.py; PCL's main_pcl.py and pcl/builder.py write the same"
    releases = "moco_v1_200ep_pretrain.pth.tar, moco_v2_200ep/800ep_pretrain.pth.tar; PCL_v1/v2 *.pth.tar"
    signature = "state_dict with module.encoder_q.*"
    backbone_prefix = "module.encoder_q."
    fc_is_head = True
    heads = ((r"module\.encoder_q\.fc\.((0|2)\.)?(weight|bias)", "query projection head (fc)"),
             (r"module\.encoder_k\..+", "key (momentum) encoder"),
             (r"module\.queue", "negative queue"), (r"module\.queue_ptr", "queue pointer"))
    entries = TRAINING_ENTRIES

    def matches(self, payload):
        return _has_prefix(_nested(payload, "state_dict"), self.backbone_prefix)


@register
class MocoV3Format(CheckpointFormat):
    name = "moco_v3"
    repository = "facebookresearch/moco-v3"
    anchor = "main_moco.py (save_checkpoint), moco/builder.py (MoCo_ResNet)"
    releases = "r-50-100ep/300ep/1000ep.pth.tar (ResNet-50 only)"
    signature = "state_dict with module.base_encoder.*"
    backbone_prefix = "module.base_encoder."
    fc_is_head = True
    heads = ((r"module\.base_encoder\.fc\..+", "projector (base_encoder.fc MLP)"),
             (r"module\.momentum_encoder\..+", "momentum encoder"),
             (r"module\.predictor\..+", "predictor"))
    entries = TRAINING_ENTRIES | {"scaler": "mixed-precision scaler state"}

    def matches(self, payload):
        return _has_prefix(_nested(payload, "state_dict"), self.backbone_prefix)


@register
class LemniscateFormat(CheckpointFormat):
    name = "lemniscate"
    repository = "zhirongw/lemniscate.pytorch"
    anchor = "main.py (save_checkpoint), models/resnet.py, lib/NCEAverage.py"
    releases = "lemniscate_resnet18.pth.tar, lemniscate_resnet50.pth.tar (InsDis / IR)"
    signature = "state_dict with module.conv1.weight and the 128-d module.fc"
    backbone_prefix = "module."
    fc_is_head = True
    heads = ((r"module\.fc\.(weight|bias)", "128-d embedding (fc)"),)
    entries = TRAINING_ENTRIES | {"lemniscate": "NCEAverage memory bank (a pickled module)",
                                  "best_prec1": "best kNN accuracy"}
    allowed_globals = (
        _opaque("lib.NCEAverage.NCEAverage", "the NCEAverage memory bank"),
        _opaque("lib.LinearAverage.LinearAverage", "the LinearAverage memory bank"),
        _opaque("alias_multinomial.AliasMethod", "the NCE noise sampler"),
        _opaque("lib.alias_multinomial.AliasMethod", "the NCE noise sampler"),
        AllowedGlobal("torch.nn.backends.thnn._get_thnn_function_backend", _no_backend,
                      "the `_backend` of modules pickled by PyTorch < 1.0, replaced by None"),
    )

    def matches(self, payload):
        weights = _nested(payload, "state_dict")
        return isinstance(weights, Mapping) and "module.conv1.weight" in weights and "module.fc.weight" in weights


@register
class PyContrastFormat(CheckpointFormat):
    name = "pycontrast"
    repository = "HobbitLong/PyContrast"
    anchor = "pycontrast/learning/contrast_trainer.py (save), pycontrast/networks/build_backbone.py"
    releases = "InsDis.pth, PIRL.pth, MoCo.pth, MoCov2.pth, InfoMin_200/800.pth (RGB models)"
    signature = "model with module.encoder.*"
    backbone_prefix = "module.encoder."
    heads = ((r"module\.head\..+", "projection head"), (r"module\.head_jig\..+", "jigsaw head (PIRL)"))
    entries = TRAINING_ENTRIES | {"contrast": "memory bank / queue", "model_ema": "momentum encoder",
                                  "opt": "training options", "amp": "apex mixed-precision state"}
    allowed_globals = (NAMESPACE,)

    def matches(self, payload):
        return _has_prefix(_nested(payload, "model"), self.backbone_prefix)

    def weights(self, payload):
        return dict(payload["model"])

    def weights_entries(self):
        return ("model",)


CMC_REASON = (
    "its L encoder reads one channel of CIE L normalised as CMC does, and its ab encoder two; RingBench's "
    "exported backbone takes 3 channels (the lightness view is rendered as grey RGB, which detection "
    "fine-tunes), and no exact map turns CMC's 1-channel L stem into it")


@register
class PyContrastCmcFormat(CheckpointFormat):
    name = "pycontrast_cmc"
    repository = "HobbitLong/PyContrast"
    anchor = "pycontrast/networks/build_backbone.py (CMCSingleHead: encoder1 / encoder2)"
    releases = "CMC.pth (refused, see the reason)"
    signature = "model with module.encoder1.* and module.encoder2.*"
    entries = PyContrastFormat.entries
    allowed_globals = (NAMESPACE,)

    def matches(self, payload):
        return _has_prefix(_nested(payload, "model"), "module.encoder1.")

    def weights(self, payload):
        return dict(payload["model"])

    def weights_entries(self):
        return ("model",)

    def refusal(self, payload):
        conv = _nested(payload, "model", "module.encoder1.layer1.0.conv1.weight")
        width = f" (layer1 is {conv.shape[0]} channels wide, a width-scaled ResNet)" if isinstance(
            conv, torch.Tensor) and conv.shape[0] != 64 else ""
        return f"a CMC model (PyContrast's CMCSingleHead){width}: {CMC_REASON}"


@register
class CmcFormat(CheckpointFormat):
    name = "cmc"
    repository = "HobbitLong/CMC"
    anchor = "train_CMC.py (the saved state), models/resnet.py (ResNetV1/V2: l_to_ab, ab_to_l)"
    releases = "CMC ImageNet ResNet-50 v1/v2/v3 (refused, see the reason)"
    signature = "model with [module.]l_to_ab.* and [module.]ab_to_l.*"
    entries = {"opt": "training options", "optimizer": "optimizer state",
               "contrast": "NCE memory", "epoch": "epoch"}
    allowed_globals = (NAMESPACE,)

    def matches(self, payload):
        weights = _nested(payload, "model")
        return _has_prefix(weights, "l_to_ab.") or _has_prefix(weights, "module.l_to_ab.")

    def weights(self, payload):
        return dict(payload["model"])

    def weights_entries(self):
        return ("model",)

    def refusal(self, payload):
        weights = payload["model"]
        conv = weights.get("module.l_to_ab.layer1.0.conv1.weight", weights.get("l_to_ab.layer1.0.conv1.weight"))
        width = " (a width-scaled ResNet: layer1 is 32 channels wide, ResNetV1's is_half)" if isinstance(
            conv, torch.Tensor) and conv.shape[0] == 32 else ""
        return f"a CMC model{width}: {CMC_REASON}"


@register
class SwavFormat(CheckpointFormat):
    name = "swav"
    repository = "facebookresearch/swav"
    anchor = "src/resnet50.py (projection_head, prototypes; the ConstantPad2d(1) + padding 2 stem equals torchvision's padding 3)"
    releases = "swav_800ep/400ep/200ep/100ep_pretrain.pth.tar, deepclusterv2_*_pretrain.pth.tar, selav2_*_pretrain.pth.tar"
    signature = "a flat state dict with module.conv1.weight and module.projection_head.* or module.prototypes.*"
    backbone_prefix = "module."
    heads = ((r"module\.projection_head\..+", "projection head"),
             (r"module\.prototypes\.(prototypes\d+\.)?weight", "prototypes"))

    def matches(self, payload):
        return (_flat_tensors(payload) and "module.conv1.weight" in payload
                and (_has_prefix(payload, "module.projection_head.") or _has_prefix(payload, "module.prototypes.")))

    def weights(self, payload):
        return dict(payload)

    def weights_entries(self):
        return ()

    def backbone_name(self, key):
        if key.startswith(("module.projection_head.", "module.prototypes.")):
            return None
        return super().backbone_name(key)


@register
class RingOfficialFormat(CheckpointFormat):
    name = "ring_official"
    repository = "mhw32/contrastive-ring-public"
    anchor = "src/models/resnet2.py (CustomResNet.features), src/systems/systems.py (model, model_k, queue, memory_bank)"
    releases = "Lightning checkpoints of PretrainNCESystem / PretrainMoCoSystem (resnet18 / resnet50, conv3x3 stem for CIFAR)"
    signature = "Lightning state_dict with model.features.0.weight"
    heads = ((r"model\.l[12]\.(weight|bias)", "projection head (l1, l2)"),
             (r"model_k\..+", "key (momentum) encoder"),
             (r"memory_bank\._bank", "memory bank"), (r"queue", "negative queue"), (r"queue_ptr", "queue pointer"))
    entries = LIGHTNING_ENTRIES
    stems = ("imagenet", "cifar")  # conv3x3=True is RingBench's cifar stem exactly (3x3, stride 1, pad 1, no max-pool)
    # CustomResNet.features = children of a torchvision ResNet without fc: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layers
    FEATURE_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}

    def matches(self, payload):
        weights = _nested(payload, "state_dict")
        return isinstance(weights, Mapping) and "model.features.0.weight" in weights

    def backbone_name(self, key):
        match = re.fullmatch(r"model\.features\.(\d+)\.(.+)", key)
        if match and match.group(1) in self.FEATURE_INDEX:
            return f"{self.FEATURE_INDEX[match.group(1)]}.{match.group(2)}"
        return None


SOLO_CIFAR_REASON = (
    "its CIFAR stem is a 3x3 stride-1 convolution with padding 2 (solo/methods/base.py), RingBench's cifar "
    "stem pads by 1, so the feature maps differ (34 px instead of 32) and the weights would not compute "
    "what they were trained to")


@register
class SoloLearnFormat(CheckpointFormat):
    name = "solo_learn"
    repository = "vturrisi/solo-learn"
    anchor = "solo/methods/base.py (BaseMethod: backbone, classifier; BaseMomentumMethod: momentum_backbone)"
    releases = "Lightning .ckpt of ResNet-18/50 ImageNet(-100) runs (CIFAR runs refused, see the reason)"
    signature = "Lightning state_dict with backbone.conv1.weight"
    backbone_prefix = "backbone."
    heads = ((r"projector\..+", "projector"), (r"momentum_backbone\..+", "momentum backbone"),
             (r"momentum_projector\..+", "momentum projector"), (r"predictor\..+", "predictor"),
             (r"classifier\.(weight|bias)", "online linear classifier"),
             (r"prototypes\..+", "prototypes"), (r"queue(_ptr)?", "negative queue"))
    entries = LIGHTNING_ENTRIES

    def matches(self, payload):
        weights = _nested(payload, "state_dict")
        return isinstance(weights, Mapping) and "backbone.conv1.weight" in weights

    def refusal(self, payload):
        conv = payload["state_dict"]["backbone.conv1.weight"]
        if isinstance(conv, torch.Tensor) and tuple(conv.shape[-2:]) == (3, 3):
            return f"a solo-learn CIFAR run: {SOLO_CIFAR_REASON}"
        return None


@register
class VisslFormat(CheckpointFormat):
    name = "vissl"
    repository = "facebookresearch/vissl"
    anchor = "extra_scripts/convert_vissl_to_torchvision.py (classy_state_dict.base_model.model.trunk, _feature_blocks.)"
    releases = "VISSL model zoo ResNet-50 *.torch (SimCLR, SwAV, MoCo, PIRL, ... trained in VISSL)"
    signature = "classy_state_dict.base_model.model.trunk with _feature_blocks.*"
    backbone_prefix = "trunk._feature_blocks."
    heads = ((r"heads\..+", "heads"),)
    entries = {"phase_idx": "phase index", "iteration": "iteration", "loss": "loss state",
               "train_phase_idx": "training phase index", "iteration_num": "iteration"}

    def matches(self, payload):
        return _has_prefix(_nested(payload, "classy_state_dict", "base_model", "model", "trunk"), "_feature_blocks.")

    def weights(self, payload):
        model = payload["classy_state_dict"]["base_model"]["model"]
        return {f"{part}.{key}": value for part in ("trunk", "heads") for key, value in (model.get(part) or {}).items()}

    def weights_entries(self):
        return ("classy_state_dict",)


@register
class TorchvisionFormat(CheckpointFormat):
    name = "torchvision"
    repository = "pytorch/vision (and timm ResNets, which use the same names)"
    anchor = "torchvision/models/resnet.py (ResNet.state_dict)"
    releases = "resnet18/resnet50 ImageNet weights (e.g. resnet50-0676ba61.pth, resnet50-11ad3fa6.pth)"
    signature = "a flat state dict with conv1.weight and layer1.* (plain torchvision names)"
    heads = ((r"fc\.(weight|bias)", "classifier (fc)"),)

    def matches(self, payload):
        return _flat_tensors(payload) and "conv1.weight" in payload and _has_prefix(payload, "layer1.")

    def weights(self, payload):
        return dict(payload)

    def weights_entries(self):
        return ()

    def backbone_name(self, key):
        return None if key.startswith("fc.") else key


@register
class SimclrConvertedFormat(CheckpointFormat):
    name = "simclr_converted"
    repository = "tonylins/simclr-converter (SimCLR v1 TensorFlow checkpoints converted to PyTorch)"
    anchor = "convert.py (torch.save({'state_dict': model.state_dict()})), eval.py (no input normalisation)"
    releases = "resnet50-1x.pth (the 2x / 4x widths are not torchvision ResNets and are refused by shape)"
    signature = "state_dict with plain conv1.weight, layer1.* and fc.* names"
    heads = ((r"fc\.(weight|bias)", "supervised linear head (fc)"),)
    mean = [0.0, 0.0, 0.0]  # SimCLR's TensorFlow models take 0-1 pixels unnormalised
    std = [1.0, 1.0, 1.0]

    def matches(self, payload):
        weights = _nested(payload, "state_dict")
        return isinstance(weights, Mapping) and "conv1.weight" in weights and _has_prefix(weights, "layer1.")

    def backbone_name(self, key):
        return None if key.startswith("fc.") else key


# ----------------------------------------------------------------------------------------------------
# Checking a mapped backbone against the architecture


def _reference(arch: str, stem: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_backbone(arch, stem)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _first(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def match_architecture(backbone: dict[str, torch.Tensor], stems: tuple[str, ...], where: str
                       ) -> tuple[str, str, dict[str, torch.Tensor], int]:
    """(arch, stem, complete state dict, num_batches_tracked buffers filled) for the architecture whose key
    set and shapes the mapped backbone equals; refuses naming the missing / unexpected / misshapen keys."""
    def plain(keys):
        return {key for key in keys if not key.endswith(NUM_BATCHES_TRACKED)}

    candidates = [(arch, stem, _reference(arch, stem)) for arch in ARCHS for stem in STEMS if stem in stems]
    best = max(candidates, key=lambda c: (len(plain(c[2]) & set(backbone)), -len(set(backbone) ^ set(c[2]))))
    shape_error = None
    for arch, stem, reference in candidates:
        if plain(reference) != plain(backbone):
            continue
        counters = [key for key in reference if key.endswith(NUM_BATCHES_TRACKED)]
        present = [key for key in counters if key in backbone]
        if present and len(present) != len(counters):
            raise ImportRefused(f"{where}: {len(counters) - len(present)} BatchNorm counters missing "
                                f"(first: {_first(set(counters) - set(present))})")
        wrong = sorted(key for key, shape in reference.items()
                       if key in backbone and tuple(backbone[key].shape) != shape)
        if wrong:
            shape_error = shape_error or (f"{where}: backbone tensor {wrong[0]} has shape "
                                          f"{tuple(backbone[wrong[0]].shape)}, {arch} ({stem} stem) expects "
                                          f"{reference[wrong[0]]}")
            continue
        complete = dict(backbone)
        filled = 0
        if not present:  # PyTorch < 0.4.1 kept no counter; eval-mode BatchNorm never reads it
            for key in counters:
                complete[key] = torch.zeros((), dtype=torch.long)
                filled += 1
        return arch, stem, complete, filled
    if shape_error:
        raise ImportRefused(shape_error)
    reference = best[2]
    missing = plain(reference) - set(backbone)
    unexpected = set(backbone) - set(reference)
    parts = []
    if missing:
        parts.append(f"{len(missing)} backbone tensor(s) missing (first: {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected backbone tensor(s) (first: {_first(unexpected)})")
    raise ImportRefused(f"{where}: the backbone does not match {best[0]} ({best[1]} stem): {'; '.join(parts)}")


# ----------------------------------------------------------------------------------------------------
# Importing


@dataclass
class ImportReport:
    source: Path
    source_sha256: str
    format: str
    arch: str
    stem: str
    backbone_tensors: int
    heads: Counter
    other_entries: dict[str, str]
    filled_counters: int
    out: Path | None = None
    encoder_sha256: str = ""
    stated: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        fmt = FORMATS[self.format]
        lines = [f"imported {self.source.name} (sha256 {self.source_sha256[:16]}) as {self.format} "
                 f"({fmt.repository}; mapping v{MAPPING_VERSION})",
                 f"  backbone: {self.arch}, {self.stem} stem, {self.backbone_tensors} tensors mapped to torchvision names"]
        if self.filled_counters:
            lines.append(f"  {self.filled_counters} BatchNorm num_batches_tracked counters absent (PyTorch < 0.4.1) "
                         "and set to 0 (eval-mode BatchNorm never reads them)")
        for head, count in sorted(self.heads.items()):
            lines.append(f"  dropped {head}: {count} tensor{'s' if count != 1 else ''}")
        for entry, what in sorted(self.other_entries.items()):
            lines.append(f"  dropped entry {entry!r}" + (f": {what}" if what else ""))
        stated = ", ".join(f"{key}={value}" for key, value in self.stated.items())
        lines.append(f"  provenance: {stated}")
        if self.out is not None:
            lines.append(f"  wrote {self.out} (sha256 {self.encoder_sha256[:16]}) in {self.seconds:.1f} s")
        return lines


def recognise(payload: Any, path: Path, format_name: str = "auto") -> CheckpointFormat:
    """The format of a loaded file: the named one (which must match) or, for auto, the only one that does."""
    if format_name != "auto":
        if format_name not in FORMATS:
            raise ImportRefused(f"--format {format_name!r}: not a supported format; valid: auto, {', '.join(FORMATS)}")
        chosen = FORMATS[format_name]()
        if not chosen.matches(payload):
            raise ImportRefused(f"{path}: not in the {format_name} layout (expected {chosen.signature}); "
                                f"{_layout_summary(payload)}")
        return chosen
    matching = [cls() for cls in FORMATS.values() if cls().matches(payload)]
    if len(matching) == 1:
        return matching[0]
    candidates = "; ".join(f"{cls.name}: {cls.signature}" for cls in FORMATS.values())
    if not matching:
        if isinstance(payload, Mapping) and payload.get("format") == FORMAT:
            raise ImportRefused(f"{path}: already a RingBench encoder; evaluate it as it is")
        raise ImportRefused(f"{path}: no supported layout matches ({_layout_summary(payload)}); candidates: {candidates}")
    names = ", ".join(fmt.name for fmt in matching)
    raise ImportRefused(f"{path}: matches several layouts ({names}); pass --format with one of them "
                        f"(candidates: {candidates})")


def _layout_summary(payload: Any) -> str:
    if not isinstance(payload, Mapping):
        return f"the file holds a {type(payload).__name__}"
    keys = [str(key) for key in payload]
    return f"top-level keys: {_first(keys, 6)}"


def all_allowed_globals() -> list[AllowedGlobal]:
    return [item for cls in FORMATS.values() for item in cls.allowed_globals]


def _stated_provenance(stated: Mapping[str, Any] | None) -> dict[str, Any]:
    stated = dict(stated or {})
    unknown_fields = set(stated) - set(STATED_FIELDS)
    if unknown_fields:
        raise ImportRefused(f"unknown provenance field(s) {', '.join(sorted(unknown_fields))}; "
                            f"valid: {', '.join(STATED_FIELDS)}")
    provenance = {}
    for key in STATED_FIELDS:
        value = stated.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            provenance[key] = UNKNOWN
        elif key == "epochs":
            try:
                provenance[key] = int(value)
            except (TypeError, ValueError):
                raise ImportRefused(f"--epochs {value!r}: expected an integer") from None
            if provenance[key] < 0:
                raise ImportRefused(f"--epochs {value!r}: expected an integer >= 0")
        else:
            provenance[key] = str(value).strip()
    return provenance


def import_checkpoint(source: str | os.PathLike, out: str | os.PathLike, *, format_name: str = "auto",
                      stated: Mapping[str, Any] | None = None, source_sha256: str | None = None) -> ImportReport:
    """Import `source` into the RingBench encoder file `out`; refuses (ImportRefused) anything inexact."""
    started = time.perf_counter()
    source = Path(source)
    if not source.is_file():
        raise ImportRefused(f"{source}: no such checkpoint file")
    provenance = _stated_provenance(stated)
    allowed = list(FORMATS[format_name].allowed_globals) if format_name in FORMATS else all_allowed_globals()
    payload = safe_load(source, allowed)
    fmt = recognise(payload, source, format_name)
    reason = fmt.refusal(payload)
    if reason:
        raise ImportRefused(f"{source}: recognised as {fmt.name} ({fmt.repository}) but refused: {reason}")
    mapped = fmt.map(payload)
    where = f"{source} ({fmt.name} layout)"
    if mapped.unknown:
        raise ImportRefused(f"{where}: {len(mapped.unknown)} tensors are neither backbone nor a known head of this "
                            f"format: {_first(mapped.unknown)}")
    unknown_entries = [key for key, what in mapped.other_entries.items() if not what]
    if unknown_entries:
        raise ImportRefused(f"{where}: unknown top-level entries {_first(map(str, unknown_entries))}; known: "
                            f"{', '.join(sorted(fmt.entries)) or 'none'}")
    bad = [key for key, value in mapped.backbone.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ImportRefused(f"{where}: backbone entries that are not tensors: {_first(bad)}")
    arch, stem, state_dict, filled = match_architecture(mapped.backbone, fmt.stems, where)
    source_sha256 = source_sha256 or file_sha256(source)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the source
        backbone = build_backbone(arch, stem)
    backbone.load_state_dict({key: value.float() if value.is_floating_point() else value
                              for key, value in state_dict.items()}, strict=True, assign=True)
    metadata = {
        "method": provenance["method"], "sampler": provenance["sampler"], "sampler_params": {},
        "arch": arch, "stem": stem, "pretrain_dataset": provenance["pretrain_dataset"],
        "epochs": provenance["epochs"], "image_size": IMAGE_SIZE_BY_STEM[stem],
        "mean": list(fmt.mean), "std": list(fmt.std), "config": {}, "seed": UNKNOWN,
        "input_view": "rgb", "name": provenance["name"],
        "imported": {
            "source_file": source.name, "source_sha256": source_sha256, "format": fmt.name,
            "repository": fmt.repository, "anchor": fmt.anchor, "mapping_version": MAPPING_VERSION,
            "dropped": dict(sorted(mapped.heads.items())), "dropped_entries": sorted(map(str, mapped.other_entries)),
            "filled_counters": filled, "image_size": "the format's training size for this stem",
        },
    }
    report = ImportReport(source, source_sha256, fmt.name, arch, stem, len(mapped.backbone), mapped.heads,
                          mapped.other_entries, filled, stated={k: provenance[k] for k in STATED_FIELDS})
    report.out = save_encoder(out, backbone, metadata)
    report.encoder_sha256 = file_sha256(report.out)
    report.seconds = time.perf_counter() - started
    return report


def import_identity(metadata: Mapping[str, Any]) -> str | None:
    """What identifies an imported encoder's results: its source file's sha256 and the mapping version
    (None for an encoder RingBench trained)."""
    imported = metadata.get("imported")
    if not isinstance(imported, Mapping):
        return None
    text = f"{imported.get('source_sha256')}|{imported.get('format')}|mapping-v{imported.get('mapping_version')}"
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# On-the-fly imports for bench.run --checkpoints


def imports_dir() -> Path:
    from pretrain.embedded import cache_root

    return cache_root() / "imported"


def _read_index(index_file: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _write_index(index_file: Path, index: dict[str, Any]) -> None:
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = index_file.with_name(f".{index_file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(index))
        os.replace(temporary, index_file)
    except OSError:
        pass  # a read-only cache only costs the next run a reload


def encoder_for(path: str | os.PathLike, stream: TextIO | None = None, cache_dir: Path | None = None) -> Path:
    """The RingBench encoder file to evaluate for `path`: the file itself when it is one, else the file
    imported (`--format auto`) into the cache, where a source and mapping version are imported once.
    The import report goes to `stream` when the import happens; refusals raise ImportRefused."""
    source = Path(path).resolve()
    if not source.is_file():
        raise ImportRefused(f"{path}: no such checkpoint file")
    cache_dir = Path(cache_dir) if cache_dir is not None else imports_dir()
    index_file = cache_dir / "index.json"
    # keyed by content: a file swapped in place with its size and mtime put back is never the old verdict
    sha = file_sha256(source)
    key = f"{sha}|mapping-v{MAPPING_VERSION}"
    index = _read_index(index_file)
    known = index.get(key)
    if known == "ringbench":
        return source
    if isinstance(known, str) and Path(known).is_file():
        return Path(known)
    payload = safe_load(source, all_allowed_globals())
    if isinstance(payload, Mapping) and payload.get("format") == FORMAT:
        index[key] = "ringbench"
        _write_index(index_file, index)
        return source
    del payload
    target = cache_dir / f"{sha[:20]}-m{MAPPING_VERSION}" / "encoder.pt"
    if not target.is_file():
        report = import_checkpoint(source, target, source_sha256=sha)
        if stream is not None:
            print("\n".join(report.lines()), file=stream, flush=True)
    index[key] = str(target)
    _write_index(index_file, index)
    return target


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.checkpoint import",
        description="Turn a published checkpoint into a RingBench encoder file (exact key map, provenance).",
        epilog=f"Formats: {', '.join(FORMATS)}. Unstated provenance is recorded as '{UNKNOWN}'.")
    parser.add_argument("source", type=Path, help="the published checkpoint file")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                        help="the layout (default auto: recognised from the keys)")
    parser.add_argument("--out", type=Path, required=True, help="the encoder file to write")
    parser.add_argument("--method", default=None, help="pretraining method, as you know it (e.g. moco)")
    parser.add_argument("--sampler", default=None, help="negative sampler (e.g. nce)")
    parser.add_argument("--pretrain-dataset", default=None, dest="pretrain_dataset", help="e.g. imagenet")
    parser.add_argument("--epochs", default=None, help="pretraining epochs")
    parser.add_argument("--name", default=None, help="a name for the model, e.g. moco_v2_800ep")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "import":
        print("usage: python -m pretrain.checkpoint import SRC --out ENCODER [--format auto] [--method ...]",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    stated = {key: getattr(args, key) for key in STATED_FIELDS}
    try:
        report = import_checkpoint(args.source, args.out, format_name=args.format, stated=stated)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0
