"""Suite options, declared once: one frozen dataclass per suite, parsed generically.

A suite declares its options as a subclass of `SuiteOptions`, every field made with `option(...)`:
its default, its help text, and optionally a `check` (validate or normalise one value) and an
`identity` (how the value enters the cell id). Types come from the annotations (bool, int, float,
str, tuple[int | float | str, ...], dict); `key=value` text is parsed by the one parser
(`ringbench_common.overrides`). Checks across fields, and values resolved against the data folder, go in
`validate(data_root)`, which returns the object (a `dataclasses.replace` copy when it fills an
internal field).

    @dataclass(frozen=True)
    class KnnOptions(ViewOptions):
        ks: tuple[int, ...] = option((20, 200), "one metric per k", check=each_at_least(1))
        device: str = option("", "empty: cuda when available", check=device_spelling)

Two forms of the same options travel: the identity mapping (`Cell.options`, stored in result.json and
hashed into the cell id, JSON values as the user gave them) and the typed object (`Cell.settings`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ringbench_common.overrides import OverrideError, describe, parse_override, parse_text, unknown_key


class InputError(ValueError):
    """Bad input found before submission; the message names the file, key or value and what was expected."""


def option(default: Any, help: str, *, check: Callable[[Any], Any] | None = None,
           identity: Callable[[Any], Any] | None = None) -> Any:
    """A suite option field: default, help text, an optional `check(value) -> value` (raises ValueError
    saying what was expected; may return a normalised value of the same type) and an optional
    `identity(value)` (the JSON value the cell id hashes; default: the value itself)."""
    metadata = {"help": help, "check": check, "identity": identity}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def internal(default: Any = None) -> Any:
    """A field filled by `validate` (e.g. a resolved engine): no key, not part of the identity."""
    return dataclasses.field(default=default, metadata={"internal": True}, compare=False)


# ----------------------------------------------------------------------------- reusable checks and identities


def comma_text(value: Sequence[Any]) -> str:
    """Identity of a list option that earlier versions stored as one comma string ("ncc,logreg")."""
    return ",".join(str(item) for item in value)


def whole_as_int(value: float) -> int | float:
    """Identity of a float option that earlier versions stored as an integer when whole (0, 2)."""
    return int(value) if float(value).is_integer() else value


def at_least(minimum: float) -> Callable[[Any], Any]:
    def check(value):
        if not value >= minimum:
            raise ValueError(f"expected {'an integer' if isinstance(value, int) else 'a number'} >= {minimum:g}")
        return value
    return check


def positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("expected a positive number")
    return value


def each_at_least(minimum: float) -> Callable[[Any], Any]:
    def check(values):
        if not values or any(not value >= minimum for value in values):
            raise ValueError(f"expected a comma list of numbers >= {minimum:g}")
        return values
    return check


def one_of(*valid: str) -> Callable[[str], str]:
    def check(value):
        if value not in valid:
            raise ValueError(f"expected one of {', '.join(valid)}")
        return value
    return check


def each_of(*valid: str) -> Callable[[Sequence[str]], Sequence[str]]:
    def check(values):
        bad = [value for value in values if value not in valid]
        if bad or not values:
            raise ValueError(f"unknown {', '.join(bad) or '(empty)'}; valid: a comma list of {', '.join(valid)}")
        return tuple(dict.fromkeys(values))
    return check


DEVICE_PATTERN = re.compile(r"(cpu|cuda(:\d+)?|mps)")


def device_spelling(value: str) -> str:
    """A `device` option: empty (CUDA when the job sees one, else CPU), cpu, cuda, cuda:N or mps. Only the
    spelling is checked up front: the job may run on another machine than the runner."""
    text = value.strip()
    if text and not DEVICE_PATTERN.fullmatch(text):
        raise ValueError("expected cpu, cuda, cuda:N or mps (empty: CUDA when available)")
    return text


# ----------------------------------------------------------------------------- the base class


def _shown(value: Any) -> str:
    return comma_text(value) if isinstance(value, tuple | list) else str(value)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """A Python or JSON value as annotation `kind`; text goes through the one parser."""
    if isinstance(value, str) and kind is not str:
        return parse_text(key, value, kind)
    origin = typing.get_origin(kind)
    if origin is tuple and isinstance(value, list | tuple):
        item = typing.get_args(kind)[0]
        return tuple(_coerce(key, entry, item) for entry in value)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(kind, isinstance(value, origin or kind))
    if not ok:
        raise OverrideError(f"{key}={value!r}: expected {describe(kind)}")
    return float(value) if kind is float else value


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    """Base of a suite's options (see the module docstring). Every field has a default."""

    where: ClassVar[str] = "suite"  # the suite name, set by Suite subclasses for messages

    def validate(self, data_root: Path | None) -> SuiteOptions:
        """Checks across fields and values resolved against the data folder; raise InputError."""
        return self

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        """The user's keys (internal fields left out), in declaration order."""
        return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}

    @classmethod
    def kinds(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {name: hints[name] for name in cls.fields()}

    @classmethod
    def identity_value(cls, key: str, value: Any) -> Any:
        encode = cls.fields()[key].metadata.get("identity")
        value = list(value) if isinstance(value, tuple) else value
        return encode(value) if encode else value

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The identity mapping of the defaults (what result.json records when nothing is overridden)."""
        instance = cls()
        return {key: cls.identity_value(key, getattr(instance, key)) for key in cls.fields()}

    @classmethod
    def help(cls) -> list[str]:
        """One line per key: `key=default  help`."""
        return [f"{key}={_shown(getattr(cls(), key))}  {f.metadata.get('help', '')}" for key, f in cls.fields().items()]

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> dict[str, Any]:
        """The identity mapping: the defaults with `key=value` pairs applied, each typed by its annotation."""
        options = cls.defaults()
        kinds = dict(sorted(cls.kinds().items()))  # an unknown key's message lists them in order
        for pair in pairs:
            try:
                key, value = parse_override(pair, kinds, what=f"{cls.where} option")
            except OverrideError as error:
                raise InputError(str(error)) from None
            options[key] = cls.identity_value(key, value)
        return options

    @classmethod
    def parse(cls, options: Mapping[str, Any], data_root: Path | None = None) -> SuiteOptions:
        """The typed, checked object from an identity mapping (missing keys take their defaults)."""
        fields, kinds = cls.fields(), cls.kinds()
        for key in options:
            if key not in fields:
                raise InputError(str(unknown_key(key, sorted(fields), f"{cls.where} option")))
        values = {}
        for key, value in options.items():
            try:
                typed = _coerce(key, value, kinds[key])
            except OverrideError as error:
                raise InputError(f"{cls.where} option {error}") from None
            check = fields[key].metadata.get("check")
            if check is not None:
                try:
                    typed = check(typed)
                except InputError:  # a check that names the key itself
                    raise
                except ValueError as error:
                    raise InputError(f"{cls.where} option {key}={_shown(value)!r}: {error}") from None
            values[key] = typed
        return cls(**values).validate(data_root)


@dataclasses.dataclass(frozen=True)
class ViewOptions(SuiteOptions):
    """Options of every suite that embeds images for a checkpoint: which CMC encoders to evaluate and the
    explicit override that feeds RGB to an encoder trained on another view."""

    cmc_features: str = option("concat", "CMC only: l | ab | concat (L + ab features, CMC's own evaluation)",
                               check=lambda value: _cmc_features(value))
    force_rgb_input: bool = option(False, "feed RGB to the exported backbone whatever view it was trained on")


def _cmc_features(value: str) -> str:
    from pretrain.views import CMC_FEATURES

    text = value.strip().lower()
    if text not in CMC_FEATURES:
        raise ValueError(f"expected one of {', '.join(CMC_FEATURES)}")
    return text
