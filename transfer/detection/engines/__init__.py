"""Detection engines: `torchvision_engine` (pure PyPI, runs anywhere) and `detectron2_engine`.

Both take a `DetectionJob` and return `EngineResult` with the same metric names. Only
`detectron2_engine` imports Detectron2, and only inside its functions.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

ENGINES = ("auto", "detectron2", "torchvision")
# The engine registry: name -> module with `run_detection(job, state_dict, heads, workdir, where)`, imported
# only when a cell runs on it (Detectron2 stays out of every other import).
ENGINE_MODULES = {
    "detectron2": "transfer.detection.engines.detectron2_engine",
    "torchvision": "transfer.detection.engines.torchvision_engine",
}

DETECTRON2_INSTALL_HINT = (
    "Detectron2 is not on PyPI; install it from source into this environment, after torch and torchvision: "
    "`pip install fvcore iopath omegaconf hydra-core 'setuptools<81' && "
    "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
    "(on a GPU node, or with FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST set to the cluster's GPUs). "
    "Or use engine=torchvision."
)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the iteration, lr and loss terms."""


@dataclass
class EngineResult:
    metrics: dict[str, float]  # "bbox/AP", "segm/AP50", "keypoints/AP", ... (x100)
    info: dict[str, Any] = field(default_factory=dict)
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # iou type -> category name -> AP


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def resolve_engine(requested: str, embedded: bool) -> str:
    """auto: Detectron2 when importable and real COCO data is given; the embedded CPU recipe uses torchvision."""
    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; valid engines: {', '.join(ENGINES)}")
    if requested == "detectron2":
        if not detectron2_available():
            raise ModuleNotFoundError(f"engine=detectron2 was asked for but `import detectron2` fails. {DETECTRON2_INSTALL_HINT}")
        return "detectron2"
    if requested == "torchvision":
        return "torchvision"
    return "detectron2" if (detectron2_available() and not embedded) else "torchvision"


def run_detection(engine: str, job, state_dict, heads, workdir, where: str) -> EngineResult:
    """Fine-tune and evaluate `job` on the registered `engine` from an encoder's loaded state dict."""
    import importlib

    if engine not in ENGINE_MODULES:
        raise ValueError(f"unknown engine {engine!r}; registered engines: {', '.join(ENGINE_MODULES)}")
    return importlib.import_module(ENGINE_MODULES[engine]).run_detection(job, state_dict, heads, workdir, where)


# PASCAL VOC (Faster R-CNN C4): name -> module with `run_voc_detection(job, state_dict, workdir, where)`.
VOC_ENGINE_MODULES = {
    "detectron2": "transfer.detection.engines.detectron2_engine",
    "torchvision": "transfer.detection.engines.torchvision_voc",
}


def run_voc_detection(engine: str, job, state_dict, workdir, where: str) -> EngineResult:
    """Fine-tune and evaluate a VOC job on the registered `engine` from an encoder's loaded state dict."""
    import importlib

    if engine not in VOC_ENGINE_MODULES:
        raise ValueError(f"unknown engine {engine!r}; registered VOC engines: {', '.join(VOC_ENGINE_MODULES)}")
    return importlib.import_module(VOC_ENGINE_MODULES[engine]).run_voc_detection(job, state_dict, workdir, where)
