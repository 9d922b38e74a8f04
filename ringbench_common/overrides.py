"""The one `key=value` parser: command-line text to typed values, typed by a dataclass field or a default.

Serves the training config (`pretrain.config`, dotted keys into nested sections), suite options
(`bench.plan`) and resource profiles (`slurm.profiles`). Light on purpose (no torch, no OmegaConf):
`bench` and `slurm` import it at start-up.

    parse_text("sampler.w_out", "0.2", float)          -> 0.2
    parse_text("lr_milestones", "0.5, 0.8", tuple[float, ...]) -> (0.5, 0.8)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any


class OverrideError(ValueError):
    """A `key=value` that cannot be parsed; the message names the key, the text and what was expected."""


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def comma_list(value: Any) -> tuple[str, ...]:
    """An option given as "a, b,c" or as a sequence: its non-empty, stripped items in order."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(text for text in (str(item).strip() for item in items) if text)


def split_pair(item: str, usage: str = "key=value") -> tuple[str, str]:
    """"key=value" -> (key, value); anything else raises naming the expected shape."""
    if "=" not in item:
        raise OverrideError(f"{item!r} is not {usage}")
    key, _, value = item.partition("=")
    return key.strip(), value


def describe(kind: Any) -> str:
    """What a value of annotation `kind` looks like, for error messages ("an integer", "a comma list of floats")."""
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a float", str: "a string", dict: "a JSON object"}
    if kind in names:
        return names[kind]
    if typing.get_origin(kind) in (list, tuple):
        plurals = {bool: "booleans", int: "integers", float: "floats", str: "strings"}
        return f"a comma list of {plurals.get(typing.get_args(kind)[0], 'values')}"
    return getattr(kind, "__name__", str(kind))


def _optional(kind: Any) -> tuple[Any, bool]:
    """(inner kind, accepts None) for `X | None` / Optional[X]."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(kind))
    return kind, False


def parse_text(key: str, text: str, kind: Any, label: str = "") -> Any:
    """`text` as a value of annotation `kind`; errors read "<label><key>=<text>: expected ...".

    Booleans accept 1/true/yes/on and 0/false/no/off; list and tuple kinds take comma lists; dict
    takes a JSON object; `Any` takes JSON or else the text; `X | None` also takes none/null.
    """
    kind, nullable = _optional(kind)
    if nullable and text.strip().lower() in ("", "none", "null"):
        return None
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in TRUE or lowered in FALSE:
                return lowered in TRUE
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if typing.get_origin(kind) in (list, tuple):
            item_kind = typing.get_args(kind)[0] if typing.get_args(kind) else str
            items = [parse_text(key, item, item_kind, label) for item in comma_list(text)]
            return tuple(items) if typing.get_origin(kind) is tuple else items
        if kind is dict or typing.get_origin(kind) is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        if kind is Any:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
    except (ValueError, json.JSONDecodeError):
        raise OverrideError(f"{label}{key}={text!r}: expected {describe(kind)}") from None
    return text


def unknown_key(key: str, valid: Iterable[str], what: str = "key", aliases: Iterable[str] = ()) -> OverrideError:
    """The one error for an unknown key: close matches (among the keys and their aliases), then every valid key."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid + list(aliases), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return OverrideError(f"unknown {what} {key!r}{hint}; valid keys: {', '.join(valid) or '(none)'}")


def parse_override(item: str | tuple[str, Any], kinds: Mapping[str, Any], *, what: str = "key", label: str | None = None,
                   aliases: Mapping[str, str] | None = None, on_alias=None) -> tuple[str, Any]:
    """The one front end over `parse_text`: "key=value" (or a (key, value) pair) -> (key, typed value).

    `kinds` maps each valid key to its annotation; an unknown key gets `unknown_key`'s message; `aliases`
    maps old keys to current ones (`on_alias(old, new)` is told of each use). Values that are not text
    are kept as given. Errors read "<label><key>=<text>: expected ..." (label default: `what` + " ")."""
    key, value = split_pair(item) if isinstance(item, str) else item
    aliases = aliases or {}
    if key not in kinds and key in aliases:
        if on_alias is not None:
            on_alias(key, aliases[key])
        key = aliases[key]
    if key not in kinds:
        raise unknown_key(key, kinds, what, aliases)
    kind = kinds[key]
    if isinstance(value, str) and kind is not str:
        value = parse_text(key, value, kind, f"{what} " if label is None else label)
    elif typing.get_origin(kind) is tuple and isinstance(value, list):
        value = tuple(value)
    return key, value


def field_kinds(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> annotation for every leaf field of dataclass `cls`, nested sections included."""
    kinds: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("internal"):
            continue
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            kinds |= field_kinds(kind, f"{prefix}{field.name}.")
        else:
            kinds[f"{prefix}{field.name}"] = kind
    return kinds


def replace_path(instance: Any, key: str, value: Any) -> Any:
    """A copy of dataclass `instance` with the dotted field `key` set to `value`."""
    head, _, rest = key.partition(".")
    if rest:
        value = replace_path(getattr(instance, head), rest, value)
    return dataclasses.replace(instance, **{head: value})


def override_fields(instance: Any, overrides: Mapping[str, Any] | Iterable[str], label: str = "",
                    aliases: Mapping[str, str] | None = None, on_alias=None, what: str = "key") -> Any:
    """A copy of dataclass `instance` with `key=value` strings (or a {key: value} mapping) applied.

    Keys are dotted paths into nested dataclasses; strings are parsed to the field's type, other values
    kept. `aliases` maps old keys to their dotted names (`on_alias(old, new)` is told of each use).
    """
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides)
    kinds = field_kinds(type(instance))
    for pair in pairs:
        key, value = parse_override(pair, kinds, what=what, label=label, aliases=aliases, on_alias=on_alias)
        instance = replace_path(instance, key, value)
    return instance
