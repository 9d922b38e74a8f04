"""Negative samplers: registered classes over the pure selection functions in `selection`.

    sampler = build_sampler("ring", epochs=200, w_out=0.1, w_in=0.1)

`SAMPLER_CLASSES` is the registry (name -> class); adding a sampler is one class (a subclass of
`NegativeSampler` with its `Params` dataclass), one line here, its baseline twin in
`pretrain.sampler_twins` (torch-free, for the leaderboard) and one test file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pretrain.sampler_twins import BASELINE_TWINS
from pretrain.samplers.band import Ball, BallParams, BandWarning, Ring, RingParams
from pretrain.samplers.base import NegativeSampler, NoParams
from pretrain.samplers.debiased import DCL, HCL, DCLParams, HCLParams
from pretrain.samplers.mochi import MoCHi, MoCHiParams
from pretrain.samplers.selection import (
    ball_mask,
    check_band,
    mochi_negatives,
    ring_bounds,
    ring_mask,
    sample_band,
    sample_from_mask,
    sampled_band_thresholds,
    uniform_indices,
    value_at_rank,
)
from pretrain.samplers.uniform import NCE

SAMPLER_CLASSES: dict[str, type[NegativeSampler]] = {
    "nce": NCE,
    "ring": Ring,
    "ball": Ball,
    "dcl": DCL,
    "hcl": HCL,
    "mochi": MoCHi,
}
SAMPLERS = tuple(SAMPLER_CLASSES)
for _name, _cls in SAMPLER_CLASSES.items():  # declared torch-free, where the leaderboard reads them too
    _cls.baseline_twin = BASELINE_TWINS[_name]


def sampler_class(name: str) -> type[NegativeSampler]:
    """The registered class called `name`; a typo gets the list of valid names."""
    if name not in SAMPLER_CLASSES:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLER_CLASSES)}")
    return SAMPLER_CLASSES[name]


def sampler_parameters(name: str) -> tuple[str, ...]:
    """The parameter names sampler `name` declares."""
    return tuple(field.name for field in dataclasses.fields(sampler_class(name).Params))


def build_sampler_from(name: str, settings: Mapping[str, Any], epochs: int = 1) -> NegativeSampler:
    """Sampler `name` built from those of `settings` it declares (one settings table serves every sampler:
    benchmarks run NCE and Ring from the same {"w_out": ..., "w_in": ...})."""
    own = sampler_parameters(name)
    return build_sampler(name, epochs=epochs, **{key: value for key, value in settings.items() if key in own})


def baseline_twin(name: str) -> str | None:
    """The sampler that runs of sampler `name` are paired with (same method and settings); None for a baseline."""
    return sampler_class(name).baseline_twin


def hard_negative_samplers() -> tuple[str, ...]:
    """The registered samplers that have a baseline twin, in registry order."""
    return tuple(name for name, cls in SAMPLER_CLASSES.items() if cls.hard_negative())


def build_sampler(name: str, epochs: int = 1, **params) -> NegativeSampler:
    """A validated sampler from keyword parameters; unknown ones name the sampler's valid parameters."""
    cls = sampler_class(name)
    valid = sampler_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"sampler {name!r} has no parameter {', '.join(unknown)}; "
                         f"its parameters: {', '.join(valid) or 'none'}")
    return cls(cls.Params(**params), epochs=epochs)


__all__ = [
    "SAMPLERS", "SAMPLER_CLASSES", "Ball", "baseline_twin", "build_sampler_from", "hard_negative_samplers", "BallParams", "BandWarning", "DCL", "DCLParams", "HCL", "HCLParams",
    "MoCHi", "MoCHiParams", "NCE", "NegativeSampler", "NoParams", "Ring", "RingParams", "ball_mask", "build_sampler",
    "check_band", "mochi_negatives", "ring_bounds", "ring_mask", "sample_band", "sample_from_mask",
    "sampled_band_thresholds", "sampler_class", "sampler_parameters", "uniform_indices", "value_at_rank",
]
