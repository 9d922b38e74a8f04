"""GPU features that fail soft: when one cannot work on this node, the run goes on without it, says
so once on stderr, and records what it used.

    compile    torch.compile of the encoders -> eager, when compiling fails (no C++ compiler, an
               operation Dynamo or Inductor cannot handle, a Triton error). torch.compile is lazy, so
               the failure shows at the first call: that call is rerun eagerly, and if the eager
               module succeeds on the same input the failure was the compiler's; the run stays eager.
               An error of the model itself fails eagerly too and is raised as it is.
    precision  bf16 autocast -> fp32, on a GPU without native bf16 (V100, T4: compute capability < 8).
               fp32 rather than fp16: fp16 training needs loss scaling, and fp32 gives the same
               numbers as the reference, only slower.
    loader     the GPU decoder (nvJPEG) -> the uint8 CPU loader, when it cannot decode a test JPEG
               on the device (see `pretrain.images.device_decoder_works`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """`warn`, but a message already given in this process is not repeated (feature extraction runs
    once per split and dataset: its fallbacks are said once)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warn(message)


# ---------------------------------------------------------------------------------------------- precision


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 on `device`: CUDA compute capability >= 8 (emulation does not count: it is slower
    than fp32); CPU autocast always supports bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def resolve_precision(setting: str, device: torch.device) -> tuple[str, str | None]:
    """(the precision used, why it differs from the setting or None): auto means bf16 on CUDA and fp32
    on CPU; bf16 where the device lacks it falls back to fp32."""
    wanted = ("bf16" if device.type == "cuda" else "fp32") if setting == "auto" else setting
    if wanted == "bf16" and not bf16_supported(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        return "fp32", f"{name} has no native bf16 support; running in fp32"
    return wanted, None


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a resolved precision (disabled for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# ---------------------------------------------------------------------------------------------- compile


class CompileGuard:
    """torch.compile for one or more modules of a run, with one shared fall back to eager.

    `guard.wrap(module)` returns a callable that runs the compiled module; the first failure switches
    every wrapped module of the guard to eager, with one warning (`failure` holds the reason). The
    same holds for compile=on: the run goes on, and its metrics say it ran eagerly.
    """

    def __init__(self, compile_fn: Callable | None = None, what: str = "the encoders"):
        self.compile_fn = compile_fn
        self.what = what
        self.failure: str | None = None

    @property
    def mode(self) -> str:
        """What runs: 'compiled' or 'eager (fallback)'."""
        return "compiled" if self.failure is None else "eager (fallback)"

    def wrap(self, module: Callable) -> Callable:
        compile_fn = self.compile_fn or torch.compile
        try:
            compiled = compile_fn(module)
        except Exception as error:  # torch.compile refusing up front (e.g. an unsupported Python)
            self._failed(error)
            compiled = module
        return _GuardedModule(self, module, compiled)

    def _failed(self, error: BaseException) -> None:
        reason = _one_line(error)
        if self.failure is None:
            self.failure = reason
            warn_once(f"torch.compile of {self.what} failed ({reason}); running eagerly instead")


class _GuardedModule:
    def __init__(self, guard: CompileGuard, eager: Callable, compiled: Callable):
        self.guard, self.eager, self.compiled = guard, eager, compiled

    def __call__(self, *args, **kwargs):
        if self.guard.failure is not None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:
            result = self.eager(*args, **kwargs)  # a fault of the model itself raises here, as it is
            self.guard._failed(error)
            return result

    def __getattr__(self, name):  # attributes of the module (e.g. .module of a DDP wrapper)
        return getattr(self.eager, name)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:  # "backend='inductor' raised:" then the cause
        text = f"{text} {lines[1]}"
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
