"""JSON-lines codec for typed messages: one JSON object per line, one frozen dataclass per kind.

The control protocol (`"command"` names the request) and tako-server's channel to its data-plane workers
(`"kind"` names the message) both use it. Fields are checked against the dataclass annotations
(`typed_json`), so a bad line is a ProtocolError naming the field, never a half-built message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from tako.errors import ProtocolError
from tako.protocol.messages import REQUEST_TYPES, Reply, Request
from tako.protocol.typed_json import from_json, to_json

MAX_LINE_BYTES = 1024 * 1024

M = TypeVar("M")


def encode_message(message: Any, tag: str, kind: str) -> bytes:
    """`message` (a dataclass) as one line: `{tag: kind, ...its fields}`."""
    body = {tag: kind, **to_json(message)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


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
    decoded: M = from_json(cls, body, f"{tag} {kind!r}")
    return decoded


def encode_request(request: Request) -> bytes:
    """`request` as one line. A field left at None is omitted (the server reads it back as None), so a
    server older than an optional field still understands every request that does not use it."""
    body = {"command": request.command}
    body.update((k, v) for k, v in to_json(request).items() if v is not None)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


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
