"""The encoder checkpoint format and `load_encoder`, the one way other suites read checkpoints.

An encoder file is a `torch.save`d dict:
    format          "ringbench-encoder"
    format_version  1
    state_dict      torchvision ResNet names (conv1, bn1, layer1..4), no fc, no projection head
    metadata        see REQUIRED_METADATA, plus
                      input_view      the view the backbone expects (pretrain.views: rgb, lightness,
                                      lab_ab); files written before it existed mean "rgb", except CMC
                                      files, which are refused unless RGB input is forced
                      extra_encoders  {name: input view} of encoders stored beside the backbone
                                      (CMC: {"ab": "lab_ab"}; the backbone is the L encoder)
                      imported        files made from a published checkpoint (pretrain.importers): the
                                      source file and sha256, format, mapping version, what was dropped;
                                      their epochs and seed may be "unknown" (nobody stated them)
    extra_state_dicts  {name: state_dict} for extra_encoders (absent when there are none)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.backbones import ARCHS, STEMS, build_backbone, feature_dim
from pretrain.version import code_version as code_version  # re-exported for pretrain.train
from pretrain.views import CMC_AB, CMC_FEATURES, CMC_L, INPUT_VIEWS, feature_model, view_channels
from ringbench_common.atomic_files import atomic_write, file_sha256

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
# Provenance nobody stated (imported checkpoints): recorded as this word, never guessed.
UNKNOWN = "unknown"
MAY_BE_UNKNOWN = ("epochs", "seed")


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
    model: nn.Module | None  # forward(normalised RGB images) -> features (B, feature_dim), views applied inside
    metadata: dict[str, Any]
    path: Path
    sha256: str
    feature_dim: int
    backbone: nn.Module | None = None  # the exported backbone itself (detection); expects `backbone_view`
    backbone_view: str = "rgb"  # what `backbone` is fed: its recorded input view, or "rgb" when forced
    cmc_features: str | None = None  # CMC only: which encoders `model` concatenates (l, ab, concat)
    feature_views: tuple[str, ...] = ("rgb",)  # the view of each part of `model`'s features
    forced_rgb: bool = False

    def view_info(self) -> dict[str, Any]:
        """What every result records about the input its features came from."""
        return {"input_view": "+".join(self.feature_views), "cmc_features": self.cmc_features,
                "force_rgb_input": self.forced_rgb}


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

    With `cache_file`, infos are kept there keyed by the file's sha256, so a known file is not loaded again
    (not even torch is needed for it). The content is hashed on every call: a key of (path, size, mtime) is
    forged by `cp -p`, `rsync -t` or `tar x` over a file of the same size, and the hash costs ~0.1 s per
    100 MB against seconds to import torch and validate the file (and minutes to evaluate it).
    """
    import json

    if isinstance(path, CheckpointInfo):
        return path
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        key = file_sha256(resolved)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({error.strerror or error})") from None
    cache: dict[str, Any] = {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(key) if isinstance(cache, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("metadata"), dict) and entry.get("sha256") == key:
            return CheckpointInfo(resolved, key, entry["metadata"])
    loaded = load_encoder(resolved, cmc_features=None)  # the file and its metadata; suites pick the views
    info = CheckpointInfo(resolved, loaded.sha256, loaded.metadata)
    if cache_file is not None:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = {"sha256": info.sha256, "metadata": info.metadata}
        try:
            atomic_write(cache_file, lambda handle: handle.write(json.dumps(cache).encode()), fsync=False)
        except OSError:
            pass  # a read-only cache only costs the next run a reload
    return info


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _check_metadata(metadata: dict, where: str) -> None:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(f"{where}: metadata lacks {', '.join(missing)}")
    for key, kind in REQUIRED_METADATA.items():
        if key in MAY_BE_UNKNOWN and metadata[key] == UNKNOWN:
            continue
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
    views = [metadata.get("input_view", "rgb"), *dict(metadata.get("extra_encoders") or {}).values()]
    bad = [view for view in views if view not in INPUT_VIEWS]
    if bad:
        raise CheckpointError(f"{where}: input view {bad[0]!r} is not one of {', '.join(INPUT_VIEWS)}")
    if view_channels(metadata.get("input_view", "rgb")) != 3:
        raise CheckpointError(f"{where}: the exported backbone must take a 3-channel view, "
                              f"not {metadata['input_view']!r}")


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


def plain_module(module: nn.Module) -> nn.Module:
    """The module inside torch.compile (`_orig_mod`) and DistributedDataParallel (`module`) wrappers."""
    while True:
        if isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The plain torchvision state dict (compiled / DDP wrappers unwrapped), contiguous CPU tensors
    (channels_last modules are stored in the standard layout)."""
    return {key: value.detach().cpu().contiguous().clone() for key, value in plain_module(module).state_dict().items()}


def save_encoder(path: str | os.PathLike, backbone: nn.Module, metadata: dict[str, Any],
                 extra: dict[str, tuple[nn.Module, str]] | None = None) -> Path:
    """Validate and atomically write an encoder file from a `build_backbone` module.

    `metadata["input_view"]` is the view `backbone` was trained on ("rgb" when absent, except for CMC,
    which must say); `extra` = {name: (backbone, view)} stores further encoders beside it.
    """
    metadata = dict(metadata)
    metadata.setdefault("code_version", code_version())
    if "input_view" not in metadata:
        if metadata.get("method") == "cmc":
            raise CheckpointError(f"{path}: a CMC encoder must record its input_view (lightness for the L encoder)")
        metadata["input_view"] = "rgb"
    extra = dict(extra or {})
    if extra:
        metadata["extra_encoders"] = {name: view for name, (_, view) in extra.items()}
    _check_metadata(metadata, str(path))
    state_dict = _cpu_state_dict(backbone)
    reference = build_backbone(metadata["arch"], metadata["stem"]).state_dict()
    _check_state_dict(state_dict, reference, str(path))
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "state_dict": state_dict, "metadata": metadata}
    if extra:
        payload["extra_state_dicts"] = {}
        for name, (module, view) in extra.items():
            extra_state = _cpu_state_dict(module)
            extra_reference = build_backbone(metadata["arch"], metadata["stem"], view_channels(view)).state_dict()
            _check_state_dict(extra_state, extra_reference, f"{path} (extra encoder {name!r})")
            payload["extra_state_dicts"][name] = extra_state
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


def _load_extra(payload: dict, metadata: dict, where: str) -> dict[str, tuple[nn.Module, str]]:
    views = metadata.get("extra_encoders") or {}
    states = payload.get("extra_state_dicts") or {}
    if set(views) != set(states):
        raise CheckpointError(f"{where}: metadata lists extra encoders {sorted(views)} but the file holds "
                              f"{sorted(states)}")
    loaded = {}
    for name, view in views.items():
        module = build_backbone(metadata["arch"], metadata["stem"], view_channels(view))
        _check_state_dict(states[name], module.state_dict(), f"{where} (extra encoder {name!r})")
        module.load_state_dict(states[name], strict=True)
        loaded[name] = (module.eval(), view)
    return loaded


def resolve_views(metadata: dict[str, Any], where: str, cmc_features: str, force_rgb_input: bool
                  ) -> tuple[tuple[str, ...], str]:
    """(encoders to evaluate, view the exported backbone is fed) from metadata alone; refuses what cannot be
    evaluated (an old CMC file without the override, RGB forced onto the ab encoder, a missing encoder)."""
    recorded = metadata.get("input_view")
    is_cmc = metadata["method"] == "cmc"
    if is_cmc and cmc_features not in CMC_FEATURES:
        raise CheckpointError(f"{where}: cmc_features={cmc_features!r}; valid: {', '.join(CMC_FEATURES)}")
    selection = {"l": (CMC_L,), "ab": (CMC_AB,), "concat": (CMC_L, CMC_AB)}[cmc_features] if is_cmc else (CMC_L,)
    if force_rgb_input and selection != (CMC_L,):
        raise CheckpointError(f"{where}: force_rgb_input feeds RGB to the exported backbone alone; "
                              f"it cannot be combined with cmc_features={cmc_features} (use cmc_features=l)")
    if recorded is None and is_cmc and not force_rgb_input:
        raise CheckpointError(
            f"{where}: a CMC encoder file without metadata['input_view'] (written before input views were "
            "recorded). Its L encoder was trained on the lightness view, with colour augmentation, and "
            "earlier RingBench versions evaluated it on RGB images. Retrain it to get an encoder file that "
            "records its views (and the ab encoder), or pass force_rgb_input=true cmc_features=l to evaluate "
            "the L encoder on RGB as before (not CMC's protocol)."
        )
    available = [CMC_L, *(metadata.get("extra_encoders") or {})]
    missing = [name for name in selection if name not in available]
    if missing:
        raise CheckpointError(f"{where}: cmc_features={cmc_features} needs the {', '.join(missing)} encoder, which "
                              f"this file does not hold (it has: {', '.join(available)}); use cmc_features=l")
    return selection, "rgb" if force_rgb_input else (recorded or "rgb")


def _select_features(encoder: LoadedEncoder, extra: dict[str, tuple[nn.Module, str]], cmc_features: str,
                     force_rgb_input: bool) -> None:
    """Build `encoder.model`: the encoders to evaluate, each fed its own view (or RGB when forced)."""
    metadata = encoder.metadata
    selection, main_view = resolve_views(metadata, str(encoder.path), cmc_features, force_rgb_input)
    encoders = {CMC_L: (encoder.backbone, main_view)} | extra
    encoder.model = feature_model(encoders, selection, metadata["mean"], metadata["std"]).eval()
    encoder.backbone_view = main_view
    encoder.cmc_features = cmc_features if metadata["method"] == "cmc" else None
    encoder.feature_views = tuple(encoders[name][1] for name in selection)
    encoder.feature_dim = feature_dim(metadata["arch"]) * len(selection)
    encoder.forced_rgb = bool(force_rgb_input and metadata.get("input_view") != "rgb")


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                 cmc_features: str | None = "concat", force_rgb_input: bool = False) -> LoadedEncoder:
    """Load an encoder file; refuse anything that is not a complete RingBench encoder, naming why.

    `.model` takes normalised RGB batches (the checkpoint's mean/std) and applies each encoder's
    recorded input view itself. For CMC files `cmc_features` picks the L encoder, the ab encoder or
    both concatenated (CMC's own evaluation, the default); `force_rgb_input` feeds RGB to the exported
    backbone whatever it was trained on (the only way to evaluate a CMC file that records no view).
    `cmc_features=None` only validates the file and reads its metadata (`.model` is None).
    """
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
    extra = _load_extra(payload, metadata, str(path))
    loaded = LoadedEncoder(None, metadata, path, file_sha256(path), feature_dim(metadata["arch"]), backbone=model,
                           backbone_view=metadata.get("input_view", "rgb"))
    if cmc_features is not None:
        _select_features(loaded, extra, cmc_features, force_rgb_input)
    return loaded


if __name__ == "__main__":  # python -m pretrain.checkpoint import SRC --out ENCODER (see pretrain.importers)
    import sys

    from pretrain.importers import main

    sys.exit(main())
