"""The lines `tako logs --access` prints: access log lines (JSON, one per request) filtered by status and
shown as a short text line, or as JSON with the server's name added."""

from __future__ import annotations

import json
import re
from typing import Any

import click

_STATUS = re.compile(r"([1-5])(xx|\d\d)\Z")


def parse_status(value: str | None) -> tuple[int, int] | None:
    """`5xx` or `404` as the inclusive range of statuses it means; None for no filter."""
    if value is None:
        return None
    found = _STATUS.match(value.lower())
    if found is None:
        raise click.BadParameter(
            f"{value!r}: expected a status (404) or a class (5xx)", param_hint="--status"
        )
    if found[2] == "xx":
        low = int(found[1]) * 100
        return low, low + 99
    return int(value), int(value)


def render(server: str, line: str, statuses: tuple[int, int] | None, as_json: bool) -> str | None:
    """The text to print for one line of a server's access.log, or None when the filter drops it."""
    try:
        entry: dict[str, Any] = json.loads(line)
        status = int(entry["status"])
    except (ValueError, KeyError, TypeError):
        return None if statuses is not None else f"[{server}] {line}"  # not a line tako-server wrote
    if statuses is not None and not statuses[0] <= status <= statuses[1]:
        return None
    if as_json:
        return json.dumps({"server": server, **entry}, separators=(",", ":"))
    target = entry.get("path", "")
    if entry.get("query"):
        target += "?" + entry["query"]
    duration = f"{entry.get('duration_ms', 0):.0f}ms"
    if entry.get("websocket"):
        duration = f"websocket {duration}"
    return (
        f"[{server}] {entry.get('time', '')} {status} {entry.get('method', '')} {entry.get('host', '')}"
        f"{target} {duration} {entry.get('bytes_out', 0)}B {entry.get('client', '')} "
        f"id={entry.get('request_id', '')}"
    )
