"""The encoder checkpoint format and `load_encoder`, the one way other suites read checkpoints.

An encoder file is a `torch.save`d dict:
    format          "ringbench-encoder"
    format_version  1
    state_dict      torchvision ResNet names (conv1, bn1, layer1..4), no fc, no projection head
    metadata        see REQUIRED_METADATA
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.atomic_files import atomic_write
from pretrain.backbones import ARCHS, STEMS, build_backbone, feature_dim
from pretrain.version import code_version as code_version  # re-exported for pretrain.train

FORMAT = "ringbench-encoder"
FORMAT_VERSION = 1
REQUIRED_METADATA = {
    "method": str,  # ir, cmc, moco, simclr (or "random" for an untrained control)
    "sampler": str,  # nce, ring, ball, dcl, hcl, mochi
    "sampler_params": dict,
    "arch": str,
    "stem": str,
    "pretrain_dataset": str,
    "epochs": int,
    "image_size": int,
    "mean": list,  # per-channel normalisation the encoder was trained with (0-1 pixel scale)
    "std": list,
    "config": dict,  # the full training config
    "seed": int,
    "code_version": str,
}


def encoder_metadata(*, method: str, sampler: str, arch: str, stem: str, pretrain_dataset: str, epochs: int,
                     image_size: int, mean, std, sampler_params: dict | None = None, config: dict | None = None,
                     seed: int = 0, **extra: Any) -> dict[str, Any]:
    """The metadata dict of an encoder file: REQUIRED_METADATA's fields in one order, then `extra`
    (training adds recipe and knn_top1; `save_encoder` fills code_version when absent). A new field is
    one keyword at the call that knows it (and one REQUIRED_METADATA line if every file must carry it)."""
    return {"method": method, "sampler": sampler, "sampler_params": dict(sampler_params or {}), "arch": arch,
            "stem": stem, "pretrain_dataset": pretrain_dataset, "epochs": int(epochs), "image_size": int(image_size),
            "mean": list(mean), "std": list(std), "config": dict(config or {}), "seed": int(seed)} | extra


def untrained_metadata(*, arch: str, stem: str, image_size: int, mean, std, sampler: str = "none",
                       **extra: Any) -> dict[str, Any]:
    """Metadata of an untrained (random-init) control encoder: method "random", no data, no epochs."""
    return encoder_metadata(method="random", sampler=sampler, arch=arch, stem=stem, pretrain_dataset="none",
                            epochs=0, image_size=image_size, mean=mean, std=std, **extra)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


@dataclass
class LoadedEncoder:
    model: nn.Module  # forward(images) -> pooled features (B, feature_dim)
    metadata: dict[str, Any]
    path: Path
    sha256: str
    feature_dim: int


@dataclass(frozen=True)
class CheckpointInfo:
    """Who an encoder file is, resolved once: its path, content hash and metadata (no weights).

    Path-like, so it goes wherever a checkpoint path goes; suites read `metadata` instead of loading.
    """

    path: Path
    sha256: str
    metadata: dict[str, Any]

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:  # messages name the file
        return str(self.path)


def checkpoint_info(path: str | os.PathLike | CheckpointInfo, cache_file: Path | None = None) -> CheckpointInfo:
    """The CheckpointInfo of an encoder file (returned as is when already one), validated by `load_encoder`
    the first time it is seen.

    With `cache_file`, infos are kept there keyed by (path, size, mtime), so a known, unchanged file is
    not loaded again (not even torch is needed for it); a changed file gets a new key.
    """
    import json

    if isinstance(path, CheckpointInfo):
        return path
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    cache: dict[str, Any] = {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(key) if isinstance(cache, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("metadata"), dict) and entry.get("sha256"):
            return CheckpointInfo(resolved, entry["sha256"], entry["metadata"])
    loaded = load_encoder(resolved)
    info = CheckpointInfo(resolved, loaded.sha256, loaded.metadata)
    if cache_file is not None:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = {"sha256": info.sha256, "metadata": info.metadata}
        try:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(cache_file).with_name(f".{Path(cache_file).name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(cache))
            os.replace(temporary, cache_file)
        except OSError:
            pass  # a read-only cache only costs the next run a reload
    return info


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _check_metadata(metadata: dict, where: str) -> None:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(f"{where}: metadata lacks {', '.join(missing)}")
    for key, kind in REQUIRED_METADATA.items():
        if not isinstance(metadata[key], kind):
            raise CheckpointError(
                f"{where}: metadata[{key!r}] is {type(metadata[key]).__name__}, expected {kind.__name__}"
            )
    if metadata["arch"] not in ARCHS:
        raise CheckpointError(f"{where}: arch {metadata['arch']!r} is not one of {', '.join(sorted(ARCHS))}")
    if metadata["stem"] not in STEMS:
        raise CheckpointError(f"{where}: stem {metadata['stem']!r} is not one of {', '.join(STEMS)}")
    if len(metadata["mean"]) != 3 or len(metadata["std"]) != 3:
        raise CheckpointError(f"{where}: mean and std must have 3 channels")


def key_mismatch(expected, found) -> str:
    """'' when the key sets agree, else how they differ: counts and the first few names of each side."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
    return "; ".join(parts)


def _check_state_dict(state_dict: dict, reference: dict, where: str) -> None:
    mismatch = key_mismatch(reference, state_dict)
    if mismatch:
        raise CheckpointError(f"{where}: state_dict does not match the architecture: {mismatch}")
    for key, tensor in reference.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}: {key} has shape {tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}"
            )


def save_encoder(path: str | os.PathLike, backbone: nn.Module, metadata: dict[str, Any]) -> Path:
    """Validate and atomically write an encoder file from a `build_backbone` module."""
    metadata = dict(metadata)
    metadata.setdefault("code_version", code_version())
    _check_metadata(metadata, str(path))
    state_dict = {key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()}
    reference = build_backbone(metadata["arch"], metadata["stem"]).state_dict()
    _check_state_dict(state_dict, reference, str(path))
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "state_dict": state_dict, "metadata": metadata}
    return atomic_torch_save(payload, path)


HOW_ENCODERS_ARE_WRITTEN = (
    "RingBench encoders are written by `python -m pretrain.train` (<out>/encoder.pt) or "
    "pretrain.checkpoint.save_encoder: tensors and plain metadata only, which RingBench reads with torch's "
    "safe (weights-only) loader and nothing else"
)


def unreadable_message(path: Path, error: BaseException) -> str:
    """What a file torch's weights-only loader refused is not, without torch's advice to load it unsafely."""
    text = str(error)
    foreign = re.search(r"GLOBAL ([\w.]+)", text)
    if foreign:
        what = (f"not a RingBench encoder: it pickles the Python object {foreign.group(1)} (a whole model, or "
                "another program's checkpoint), which an encoder file never holds")
    else:
        unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)  # e.g. "Unsupported operand 149"
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        detail = unpickler.group(1)[:200] if unpickler else f"{type(error).__name__}{': ' + first if first else ''}"
        what = (f"not a readable torch checkpoint (truncated, or not written by torch.save: {detail}), "
                "so not a RingBench encoder")
    return f"{path}: {what}. {HOW_ENCODERS_ARE_WRITTEN}."


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedEncoder:
    """Load an encoder file; refuse anything that is not a complete RingBench encoder, naming why."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle of foreign classes, not a torch file at all
        raise CheckpointError(unreadable_message(path, error)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: not a RingBench encoder (expected format={FORMAT!r} with state_dict and metadata; found {found}). "
            "Training-state files (*.state.pt) are resumed with `python -m pretrain.train --resume`; "
            "export encoders with pretrain.checkpoint.save_encoder."
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {payload.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: no metadata")
    _check_metadata(metadata, str(path))
    model = build_backbone(metadata["arch"], metadata["stem"])
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: no state_dict")
    _check_state_dict(state_dict, model.state_dict(), str(path))
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return LoadedEncoder(model, metadata, path, file_sha256(path), feature_dim(metadata["arch"]))
