"""JSON-lines codec for typed messages: one JSON object per line, one frozen dataclass per kind.

The control protocol (`"command"` names the request) and tako-server's channel to its data-plane workers
(`"kind"` names the message) both use it. Fields are checked against the dataclass annotations (str, int,
float, bool, `X | None`, `tuple[X, ...]`, `dict[str, X]`, nested dataclasses), so a bad line is a
ProtocolError naming the field, never a half-built message.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from tako.errors import ProtocolError
from tako.protocol.messages import REQUEST_TYPES, Reply, Request

MAX_LINE_BYTES = 1024 * 1024

M = TypeVar("M")


def encode_message(message: Any, tag: str, kind: str) -> bytes:
    """`message` (a dataclass) as one line: `{tag: kind, ...its fields}`."""
    body = {tag: kind, **_to_json(message)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def decode_message(line: bytes, kinds: Mapping[str, type[M]], *, tag: str, noun: str, limit: int) -> M:
    """Parse one line into the dataclass its `tag` names; raise ProtocolError with a clear reason."""
    if len(line) > limit:
        raise ProtocolError(f"{noun} line is longer than {limit} bytes")
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{noun} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{noun} must be a JSON object")
    kind = body.pop(tag, None)
    if not isinstance(kind, str):
        raise ProtocolError(f'{noun} has no "{tag}" string')
    cls = kinds.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown {tag} {kind!r} (known: {', '.join(sorted(kinds))})")
    decoded: M = _from_object(cls, body, f"{tag} {kind!r}")
    return decoded


def _from_object(cls: type[Any], body: dict[str, Any], owner: str, prefix: str = "") -> Any:
    """A dataclass from a JSON object; a nested field's errors name its path (`apps[0].routes`)."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _coerce(prefix + f.name, body.pop(f.name), hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{owner} needs field {f.name!r}")
    if body:
        raise ProtocolError(f"{owner} has unknown fields: {', '.join(sorted(body))}")
    return cls(**kwargs)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved annotations of a message class (resolved once: a report arrives every 50 ms)."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """One field's JSON value checked against (and shaped into) its annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is types.UnionType or origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _coerce(name, value, inner)
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(f"field {name!r} must be a list of {_plural(args[0])}")
        return tuple(_coerce(f"{name}[{i}]", item, args[0]) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"field {name!r} must be an object")
        return {key: _coerce(f"{name}[{key!r}]", item, args[1]) for key, item in value.items()}
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ProtocolError(f"field {name!r} must be an object")
        return _from_object(annotation, dict(value), f"field {name!r}", f"{name}.")
    return _scalar(name, value, annotation)


_SCALARS: dict[Any, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
}


def _scalar(name: str, value: Any, annotation: Any) -> Any:
    accepted, what = _SCALARS[annotation]  # a KeyError here is a message type the codec cannot check
    if not isinstance(value, accepted) or (isinstance(value, bool) and annotation is not bool):
        raise ProtocolError(f"field {name!r} must be {what}")
    number: Any = value
    return float(number) if annotation is float else value


def _plural(annotation: Any) -> str:
    found = _SCALARS.get(annotation)
    return found[1].split(" ", 1)[1] + "s" if found is not None and annotation is not bool else "values"


def encode_request(request: Request) -> bytes:
    return encode_message(request, "command", request.command)


def decode_request(line: bytes) -> Request:
    """Parse one request line into its typed message; raise ProtocolError with a clear reason."""
    request: Request = decode_message(
        line, REQUEST_TYPES, tag="command", noun="request", limit=MAX_LINE_BYTES
    )
    return request


def ok_reply(data: Any = None) -> bytes:
    return json.dumps({"status": "ok", "data": data}, separators=(",", ":")).encode() + b"\n"


def error_reply(message: str, **extra: Any) -> bytes:
    body = {"status": "error", "message": message, **extra}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def encode_reply(reply: Reply) -> bytes:
    return ok_reply(reply.data) if reply.ok else error_reply(reply.message, **reply.extra)


def decode_reply(line: bytes) -> Reply:
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"tako-server sent a reply that is not JSON: {line[:200]!r}") from exc
    if not isinstance(body, dict) or body.get("status") not in ("ok", "error"):
        raise ProtocolError(f"tako-server sent a malformed reply: {line[:200]!r}")
    if body["status"] == "ok":
        return Reply(ok=True, data=body.get("data"))
    extra = {k: v for k, v in body.items() if k not in ("status", "message")}
    return Reply(ok=False, message=str(body.get("message", "")), extra=extra)
