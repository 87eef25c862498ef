"""JSON-lines codec for control messages: one JSON object per line, each way."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from tako.errors import ProtocolError
from tako.protocol.messages import REQUEST_TYPES, Reply, Request

MAX_LINE_BYTES = 1024 * 1024


def encode_request(request: Request) -> bytes:
    body: dict[str, Any] = {"command": request.command}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        body[f.name] = list(value) if isinstance(value, tuple) else value
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check one field's JSON value against its annotation (str, int, tuple[str, ...])."""
    expected = {"str": str, "int": int, "tuple[str, ...]": tuple}.get(str(annotation))
    if expected is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"field {name!r} must be a list of strings")
        return tuple(value)
    if expected is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"field {name!r} must be an integer")
        return value
    if expected is str and not isinstance(value, str):
        raise ProtocolError(f"field {name!r} must be a string")
    return value


def decode_request(line: bytes) -> Request:
    """Parse one request line into its typed message; raise ProtocolError with a clear reason."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"request line is longer than {MAX_LINE_BYTES} bytes")
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("request must be a JSON object")
    command = body.pop("command", None)
    if not isinstance(command, str):
        raise ProtocolError('request has no "command" string')
    cls = REQUEST_TYPES.get(command)
    if cls is None:
        known = ", ".join(sorted(REQUEST_TYPES))
        raise ProtocolError(f"unknown command {command!r} (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _coerce(f.name, body.pop(f.name), _annotation_text(hints[f.name]))
        elif f.default is dataclasses.MISSING:
            raise ProtocolError(f"command {command!r} needs field {f.name!r}")
    if body:
        raise ProtocolError(f"command {command!r} has unknown fields: {', '.join(sorted(body))}")
    return cls(**kwargs)


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, types.GenericAlias):
        return "tuple[str, ...]"
    return getattr(annotation, "__name__", str(annotation))


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
