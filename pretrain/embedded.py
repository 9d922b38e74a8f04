"""The embedded default encoders: an NCE and a Ring encoder pretrained on the bundled digits.

Trained once on first use and cached, so every suite works on a fresh machine with nothing
downloaded. The cache folder is $RINGBENCH_CACHE (default ~/.cache/ringbench).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("RINGBENCH_CACHE", Path.home() / ".cache" / "ringbench"))


def default_encoders() -> list[Path]:
    """Paths of the embedded [NCE, Ring] encoder files, training them first if they are not cached."""
    raise NotImplementedError("filled in by the pretrain package (issue 2)")
