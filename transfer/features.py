"""Frozen-encoder feature extraction and the on-disk feature cache shared by the transfer suites.

Features are computed once per (checkpoint content, data, image size, ...) key and stored as
.npy files written atomically; probes and linear heads read the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: str | torch.device | None = None,
    total: int | None = None,
    desc: str = "features",
) -> np.ndarray:
    """Run `model` in eval mode over normalised image batches (B, 3, H, W); return float32 (N, D).

    bf16 autocast on CUDA (the encoder's plain inference speed); fp32 on CPU.
    """
    device = pick_device(str(device) if device is not None else None)
    model = model.to(device).eval()
    chunks = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast:
        for batch in tqdm(batches, total=total, desc=desc, unit="batch", leave=False, disable=None):
            out = model(batch.to(device, non_blocking=True))
            chunks.append(out.float().cpu())
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
        from pretrain.atomic_files import atomic_write_text

        atomic_write_text(path.with_suffix(".json"), json.dumps(parts, sort_keys=True, default=str, indent=1))


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file beside `path`, then rename: a killed writer leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from pretrain.atomic_files import atomic_write

    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False), fsync=False, suffix=".npy")
