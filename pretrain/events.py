"""TensorBoard event files (torch.utils.tensorboard) for training curves, without TensorFlow.

TensorBoard imports TensorFlow whenever it is installed (with the `meta-dataset` extra, for the
Meta-Dataset reader), which costs seconds and a TensorFlow runtime in every training job. TensorBoard's
own switch, an importable `tensorboard.compat.notf`, selects its bundled stub, which writes the same
event files. Without TensorFlow TensorBoard falls back to that stub by itself, so nothing is patched.
"""

from __future__ import annotations

import os
import sys
import types


def tensorflow_installed() -> bool:
    """Whether TensorFlow is importable, found without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def tensorflow_free_tensorboard() -> None:
    """Make TensorBoard use its stub instead of importing TensorFlow, where TensorFlow is installed but not
    loaded yet."""
    if "tensorflow" not in sys.modules and tensorflow_installed():
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def summary_writer(folder: str | os.PathLike, purge_step: int | None = None):
    """A SummaryWriter into `folder`; `purge_step` makes TensorBoard drop earlier events at or past it
    (what a killed attempt logged beyond the state a resumed run starts from)."""
    tensorflow_free_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=purge_step)
