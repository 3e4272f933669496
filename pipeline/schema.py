"""Turn nested dicts (parsed YAML) into frozen dataclasses, or fail with the key path.

A tiny, strict alternative to a schema library: every dataclass field is
required unless it has a default, unknown keys are rejected with a
did-you-mean, and ``Annotated``-style constraints live in field metadata
(``min``, ``max``, ``exclusive_min``, ``choices``). Errors name the full key
path (``methods.trained.supcon.cnce``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ParamsError(ValueError):
    """A params file does not match the schema; the message names the key path."""


def constrained(default: Any = dataclasses.MISSING, **limits: Any) -> Any:
    """A dataclass field with limits: min, max, exclusive_min, exclusive_max, choices, doc; for a list,
    min_len (its length) and the others (each item)."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=limits)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=limits)
    return dataclasses.field(default=default, metadata=limits)


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_describe(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def _check_limits(value: Any, meta: typing.Mapping[str, Any], path: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        hint = did_you_mean(value, meta["choices"]) if isinstance(value, str) else ""
        raise ParamsError(f"{path}: {value!r} is not allowed{hint}; allowed: {allowed}")
    if "min" in meta and value < meta["min"]:
        raise ParamsError(f"{path}: {value!r} must be >= {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ParamsError(f"{path}: {value!r} must be <= {meta['max']}")
    if "exclusive_min" in meta and value <= meta["exclusive_min"]:
        raise ParamsError(f"{path}: {value!r} must be > {meta['exclusive_min']}")
    if "exclusive_max" in meta and value >= meta["exclusive_max"]:
        raise ParamsError(f"{path}: {value!r} must be < {meta['exclusive_max']}")


def convert(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any] | None = None) -> Any:
    """Check ``value`` against type ``tp`` and return it converted (dataclasses built)."""
    meta = meta or {}
    origin = get_origin(tp)
    if value is None and not (origin in (Union, types.UnionType) and type(None) in get_args(tp)):
        raise ParamsError(f"{path}: missing value; expected {_describe(tp)}")
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return convert(option, value, path, meta)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(errors[-1] if len(errors) == 1 else f"{path}: {value!r} matches none of: {errors}")
    if origin is Literal:
        choices = get_args(tp)
        _check_limits(value, {"choices": choices}, path)
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list or origin is tuple:
        if not isinstance(value, list):
            raise ParamsError(f"{path}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")
        if len(value) < meta.get("min_len", 0):
            raise ParamsError(f"{path}: needs at least {meta['min_len']} item(s), got {value!r}")
        (item_tp,) = get_args(tp)[:1]
        item_meta = {k: v for k, v in meta.items() if k != "min_len"}  # the other limits are per item
        items = [convert(item_tp, v, f"{path}[{i}]", item_meta) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{path}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")
        _, val_tp = get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ParamsError(f"{path}: key {k!r} must be a string")
            out[k] = convert(val_tp, v, _join(path, k), meta)
        return out
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamsError(f"{path}: expected a finite number, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{path}: expected true or false, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    elif tp is Any:
        return value
    else:  # pragma: no cover - schema author error
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    _check_limits(value, meta, path)
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from mapping ``data``; unknown or missing keys are errors."""
    if not isinstance(data, dict):
        raise ParamsError(f"{path or 'params'}: expected {_describe(cls)}, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ParamsError(
                f"{_join(path, str(key))}: unknown key{did_you_mean(str(key), fields)}; "
                f"allowed keys: {', '.join(fields)}"
            )
    kwargs = {}
    for name, field in fields.items():
        sub = _join(path, name)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{sub}: required key is missing; expected {_describe(hints[name])}")
            continue
        kwargs[name] = convert(hints[name], data[name], sub, field.metadata)
    return cls(**kwargs)
