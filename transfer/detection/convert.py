"""Move a RingBench encoder (torchvision ResNet names) into a detector backbone.

Two destinations:
- Detectron2: MoCo's renaming (conv1/bn1 -> stem.conv1[.norm], layerN -> res(N+1), bnK -> convK.norm,
  downsample.0/1 -> shortcut[.norm]) written as a pickle {"model", "__author__", "matching_heuristics"},
  which Detectron2's DetectionCheckpointer loads with its suffix-matching heuristics.
- torchvision: a strict load into `model.backbone.body` of a torchvision detection model.

Both are validated against the exact key set and shapes of the architecture before anything is
written or trained: a backbone that silently stays random is the classic way these benchmarks fail.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pretrain.backbones import ARCHS, build_backbone
from pretrain.checkpoint import atomic_write, key_mismatch

DETECTRON2_AUTHOR = "RingBench"  # anything but "Caffe2" keeps Detectron2 from renaming Caffe2 blobs
CONTAINER_KEYS = ("model", "__author__", "matching_heuristics")
# Left-overs from other training wrappers; none may survive into a converted name.
FOREIGN_PREFIXES = ("module.", "encoder_q.", "encoder_k.", "encoder.", "backbone.", "model.", "_feature_blocks.")
TORCHVISION_FRAGMENTS = ("layer", "bn1", "bn2", "bn3", "downsample")


class ConversionError(ValueError):
    """A state dict that cannot become a detection backbone; the message names the key and the reason."""


def _detectron2_name(key: str) -> str:
    """One torchvision ResNet key -> its Detectron2 backbone name (MoCo's rules, in MoCo's order)."""
    name = key if "layer" in key else "stem." + key
    for index in range(1, 5):
        name = name.replace(f"layer{index}", f"res{index + 1}")
    for index in range(1, 4):
        name = name.replace(f"bn{index}", f"conv{index}.norm")
    name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return name


def _torchvision_name(name: str) -> str:
    """Inverse of `_detectron2_name` for backbone keys."""
    key = re.sub(r"^stem\.conv1\.norm\.", "bn1.", name)
    key = re.sub(r"^stem\.conv1\.", "conv1.", key)
    key = re.sub(r"^res([2-5])\.", lambda m: f"layer{int(m.group(1)) - 1}.", key)
    key = re.sub(r"\.conv([1-3])\.norm\.", lambda m: f".bn{m.group(1)}.", key)
    key = key.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")
    return key


@functools.cache
def reference_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The torchvision key set and shapes of an ImageNet-stem ResNet without fc, as encoders store it."""
    if arch not in ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; detection supports {', '.join(sorted(ARCHS))}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_backbone(arch, "imagenet")
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def expected_detectron2_keys(arch: str) -> dict[str, tuple[int, ...]]:
    """Exact Detectron2 backbone names (with num_batches_tracked, as MoCo's converter keeps them) -> shape."""
    return {_detectron2_name(key): shape for key, shape in reference_shapes(arch).items()}


def check_imagenet_stem(state_dict: Mapping[str, Any], where: str) -> None:
    """Refuse CIFAR stems: detection backbones need the 7x7 stride-2 conv1 followed by max-pool."""
    weight = state_dict.get("conv1.weight")
    if weight is None:
        raise ConversionError(f"{where}: no conv1.weight; not a torchvision ResNet state dict")
    shape = tuple(weight.shape)
    if shape[-2:] != (7, 7):
        raise ConversionError(
            f"{where}: conv1.weight has shape {shape}, a {shape[-2]}x{shape[-1]} CIFAR-style stem. Detection "
            "(Detectron2 and torchvision R-CNN) needs the ImageNet stem (7x7 stride-2 conv1 + max-pool, "
            "conv1.weight (64, 3, 7, 7)); pretrain with stem='imagenet' to transfer to detection."
        )


def validate_torchvision_state_dict(state_dict: Mapping[str, Any], arch: str, where: str = "state dict") -> None:
    """Exact key set and shapes of `arch` (no fc, no prefixes), ImageNet stem; raise ConversionError otherwise."""
    prefixed = sorted(key for key in state_dict if key.startswith(FOREIGN_PREFIXES))
    if prefixed:
        raise ConversionError(
            f"{where}: {len(prefixed)} keys carry a wrapper prefix (first: {', '.join(prefixed[:3])}); "
            "expected bare torchvision ResNet names such as conv1.weight and layer1.0.bn1.weight"
        )
    check_imagenet_stem(state_dict, where)
    reference = reference_shapes(arch)
    mismatch = key_mismatch(reference, state_dict)
    if mismatch:
        raise ConversionError(f"{where}: not a {arch} backbone: {mismatch}")
    for key, shape in reference.items():
        if tuple(state_dict[key].shape) != shape:
            raise ConversionError(f"{where}: {key} has shape {tuple(state_dict[key].shape)}, {arch} expects {shape}")


def convert_to_detectron2(state_dict: Mapping[str, torch.Tensor], arch: str, where: str = "state dict") -> dict[str, np.ndarray]:
    """torchvision backbone state dict -> Detectron2 names with NumPy values, validated both ways."""
    validate_torchvision_state_dict(state_dict, arch, where)
    converted = {_detectron2_name(key): value.detach().cpu().numpy() for key, value in state_dict.items()}
    validate_detectron2_model(converted, arch, where)
    return converted


def validate_detectron2_model(model: Mapping[str, Any], arch: str, where: str = "detectron2 model") -> None:
    """The exact Detectron2 key set and shapes for `arch`, and no torchvision or wrapper fragments left."""
    leftovers = sorted(
        key for key in model if key.startswith(FOREIGN_PREFIXES) or any(f in key for f in TORCHVISION_FRAGMENTS)
    )
    if leftovers:
        raise ConversionError(f"{where}: unconverted names remain (first: {', '.join(leftovers[:5])})")
    expected = expected_detectron2_keys(arch)
    mismatch = key_mismatch(expected, model)
    if mismatch:
        raise ConversionError(f"{where}: Detectron2 key set differs from {arch}'s: {mismatch}")
    for key, shape in expected.items():
        if tuple(np.shape(model[key])) != shape:
            raise ConversionError(f"{where}: {key} has shape {tuple(np.shape(model[key]))}, expected {shape}")


def convert_from_detectron2(model: Mapping[str, Any], arch: str, where: str = "detectron2 model") -> dict[str, torch.Tensor]:
    """Detectron2 backbone names -> torchvision names (tensors); the inverse of `convert_to_detectron2`."""
    model = {key: value for key, value in model.items() if not key.startswith("stem.fc")}  # MoCo's unused head
    validate_detectron2_model(model, arch, where)
    state_dict = {_torchvision_name(key): torch.as_tensor(np.asarray(value)) for key, value in model.items()}
    validate_torchvision_state_dict(state_dict, arch, where)
    return state_dict


def check_output_file(out: str | os.PathLike) -> Path:
    """An output path that can become a file: not a folder (nor written as one, "DIR/"), its folder creatable."""
    text = os.fspath(out)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise ConversionError(f"--out {text}: is a folder; give a file name, e.g. {path / 'backbone.pkl'}")
    parent = path.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConversionError(f"--out {text}: cannot create folder {parent}: {blocking} is a file")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConversionError(f"--out {text}: cannot create folder {parent} ({error.strerror or error})") from None
    if not os.access(parent, os.W_OK):
        raise ConversionError(f"--out {text}: folder {parent} is not writable")
    return path


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = check_output_file(path)
    try:
        return atomic_write(path, lambda handle: handle.write(data))
    except OSError as error:
        raise ConversionError(f"{path}: cannot write ({error.strerror or error})") from None


TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive (>= 1.6) or a legacy pickle


def check_torch_file(path: str | os.PathLike) -> None:
    """Refuse a file that cannot be a torch checkpoint, saying what it looks like (torch.load on a text file
    says only "KeyError: 101", the first byte read as a pickle opcode)."""
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(TORCH_FILE_MAGIC):
        return
    if not head:
        raise ConversionError(f"{path}: empty file; expected a RingBench encoder (torch.save zip archive)")
    try:
        kind = f"a text file starting {head.decode('utf-8').splitlines()[0][:40]!r}"
    except (UnicodeDecodeError, IndexError):
        kind = f"a binary file starting with bytes {head[:8]!r}"
    raise ConversionError(
        f"{path}: {kind}, not a torch checkpoint (a torch.save zip archive starting 'PK', or a pickle); "
        "expected a RingBench encoder written by pretrain.checkpoint.save_encoder"
    )


def write_detectron2_pickle(path: str | os.PathLike, model: Mapping[str, np.ndarray], arch: str) -> Path:
    """Validate, then write {"model", "__author__", "matching_heuristics"} with plain pickle (as MoCo does)."""
    validate_detectron2_model(model, arch, str(path))
    payload = {"model": dict(model), "__author__": DETECTRON2_AUTHOR, "matching_heuristics": True}
    return _atomic_write_bytes(Path(path), pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def read_detectron2_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read a converted pickle and check its container keys."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as handle:
        payload = pickle.load(handle, encoding="latin1")
    if not isinstance(payload, dict) or set(payload) != set(CONTAINER_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ConversionError(f"{path}: expected a dict with exactly {CONTAINER_KEYS}, found {found}")
    if payload["__author__"] == "Caffe2" or payload["matching_heuristics"] is not True:
        raise ConversionError(f"{path}: __author__ must not be 'Caffe2' and matching_heuristics must be True")
    return payload


def _encoder_state_dict(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from pretrain.checkpoint import load_encoder

    check_torch_file(checkpoint)
    encoder = load_encoder(checkpoint, cmc_features=None)  # the weights only; detection feeds the view itself
    where = str(checkpoint)
    if encoder.metadata.get("stem") != "imagenet":
        raise ConversionError(
            f"{where}: metadata stem is {encoder.metadata.get('stem')!r}; detection needs the ImageNet stem "
            "(7x7 stride-2 conv1 + max-pool). CIFAR-stem encoders (3x3 conv1, no max-pool) are for 32 px "
            "classification transfer only."
        )
    return encoder.backbone.state_dict(), encoder.metadata


def convert_checkpoint_to_detectron2(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """RingBench encoder file -> Detectron2 .pkl usable as MODEL.WEIGHTS (the CLI's path-based door)."""
    check_output_file(out)
    state_dict, metadata = _encoder_state_dict(checkpoint)
    return write_detectron2_weights(state_dict, metadata["arch"], out, str(checkpoint))


def write_detectron2_weights(state_dict: Mapping[str, torch.Tensor], arch: str, out: str | os.PathLike,
                             where: str = "state dict") -> Path:
    """An already loaded encoder's state dict -> Detectron2 .pkl (a job converts the weights it loaded)."""
    return write_detectron2_pickle(out, convert_to_detectron2(state_dict, arch, where), arch)


def convert_checkpoint_to_torchvision(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """RingBench encoder file -> a state dict for `model.backbone.body` of a torchvision detector.

    Checked by a strict load into a real ResNet-FPN body before writing.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    check_output_file(out)
    state_dict, metadata = _encoder_state_dict(checkpoint)
    arch = metadata["arch"]
    validate_torchvision_state_dict(state_dict, arch, str(checkpoint))
    backbone = build_fpn_backbone(arch, nn.BatchNorm2d, out_channels=256)
    assert isinstance(backbone, BackboneWithFPN)
    load_backbone_body(backbone.body, state_dict, str(checkpoint))
    out = Path(out)
    buffer = io.BytesIO()
    torch.save({key: value.clone() for key, value in state_dict.items()}, buffer)
    return _atomic_write_bytes(out, buffer.getvalue())


def fpn_in_channels(arch: str) -> list[int]:
    """Output widths of layer1..layer4 (BasicBlock for resnet18, Bottleneck for resnet50)."""
    return {"resnet18": [64, 128, 256, 512], "resnet50": [256, 512, 1024, 2048]}[arch]


def build_fpn_backbone(arch: str, norm_layer: type[nn.Module], out_channels: int = 256) -> nn.Module:
    """A torchvision ResNet-FPN (BackboneWithFPN) with every stage trainable (Detectron2's FREEZE_AT 0).

    Built from public pieces so that resnet18 works too (its BasicBlocks need FPN, not a C4 head).
    """
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if arch not in ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; detection supports {', '.join(sorted(ARCHS))}")
    resnet = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
    return BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=fpn_in_channels(arch),
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def load_backbone_body(body: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Strict load into `backbone.body`; zero missing and zero unexpected keys, asserted."""
    body_keys = set(body.state_dict())
    missing = sorted(body_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - body_keys)
    if missing or unexpected:
        raise ConversionError(
            f"{where}: does not fit backbone.body: {len(missing)} missing (first: {', '.join(missing[:5])}), "
            f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:5])})"
        )
    result = body.load_state_dict(dict(state_dict), strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
