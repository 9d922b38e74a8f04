"""Frozen-encoder feature extraction and the on-disk feature cache shared by the transfer suites.

Features are computed once per (checkpoint content, data, image size, ...) key and stored as
.npy files written atomically; probes and linear heads read the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ringbench_common.progress import progress_bar


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# torch.compile of the encoder pays its warm-up (tens of seconds) only over many batches
COMPILE_MIN_BATCHES = 200


def fast_format(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA the encoder runs channels_last (the tensor cores' layout); elsewhere it stays as it is."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def device_images(batch: torch.Tensor, device: torch.device, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> torch.Tensor:
    """A batch on `device` ready for the encoder: uint8 batches (what crosses the bus: 4x fewer bytes)
    are converted and normalised there, in the same float operations as ToTensor + Normalize (so CPU
    results are bit-identical to the float path); channels_last on CUDA."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        if mean is None or std is None:
            raise ValueError("uint8 image batches need the encoder's mean and std to be normalised")
        from pretrain.augment import normalise, to_unit_float

        batch = normalise(to_unit_float(batch), torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                          torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
    if device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: str | torch.device | None = None,
    total: int | None = None,
    desc: str = "features",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    compile: bool | None = None,
    execution: dict | None = None,
) -> np.ndarray:
    """Run `model` in eval mode over image batches (B, 3, H, W); return float32 (N, D).

    Batches are normalised floats, or uint8 pixels normalised on the device with `mean` / `std`.
    On CUDA: bf16 autocast (fp32 on a GPU without bf16), channels_last, and `torch.compile` when
    `compile` is True (None: when `total` >= COMPILE_MIN_BATCHES batches; a failing compile falls back
    to eager, see `pretrain.gpu_fallbacks`). On CPU: fp32, the model as it is. `execution`, when given,
    receives what ran: precision, compile, and the fallbacks' reasons.
    """
    from pretrain.gpu_fallbacks import CompileGuard, autocast_for, resolve_precision, warn_once

    device = pick_device(str(device) if device is not None else None)
    model = fast_format(model.to(device).eval(), device)
    if compile is None:
        compile = device.type == "cuda" and total is not None and total >= COMPILE_MIN_BATCHES
    guard = CompileGuard(what="the feature encoder") if compile else None
    forward = guard.wrap(model) if guard is not None else model
    precision, precision_fallback = resolve_precision("auto", device)
    if precision_fallback is not None:
        warn_once(precision_fallback)
    chunks = []
    with autocast_for(precision, device):
        for batch in progress_bar(batches, total=total, desc=desc, unit="batch", leave=False, disable=None):
            out = forward(device_images(batch, device, mean, std))
            chunks.append(out.float().cpu())
    if execution is not None:
        execution.update(precision=precision, compile="on" if guard is not None and guard.failure is None else "off")
        reasons = {"precision": precision_fallback,
                   "compile": guard.failure if guard is not None else None}
        if any(reasons.values()):
            execution["fallbacks"] = {key: value for key, value in reasons.items() if value}
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def cache_key(**parts: Any) -> str:
    """A stable short hash of JSON-serialisable parts (checkpoint sha256, source, image size, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class FeatureCache:
    """Arrays on disk under `root/<key>.npy`, with the key's parts beside them in `<key>.json`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get_or_compute(self, parts: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
        key = cache_key(**parts)
        path = self.path(key)
        if path.is_file():
            try:
                array = np.load(path, allow_pickle=False)
                self.hits += 1
                return array
            except (ValueError, OSError, EOFError):
                path.unlink(missing_ok=True)  # truncated by a killed writer: recompute
        array = np.ascontiguousarray(compute())
        self.misses += 1
        self._write(path, array, parts)
        return array

    def _write(self, path: Path, array: np.ndarray, parts: dict[str, Any]) -> None:
        save_array_atomic(path, array)
        from ringbench_common.atomic_files import atomic_write_text

        atomic_write_text(path.with_suffix(".json"), json.dumps(parts, sort_keys=True, default=str, indent=1))


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file beside `path`, then rename: a killed writer leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from ringbench_common.atomic_files import atomic_write

    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False), fsync=False, suffix=".npy")
