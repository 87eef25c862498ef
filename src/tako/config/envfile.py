"""The release `.env` format, written by the CLI and read by tako-server.

One `NAME="value"` per line. Inside the double quotes a backslash escapes `\\`, `"`, `$`, and the
backquote, and `\\n` / `\\r` stand for newline and carriage return, so any value survives the round
trip, and `sh` reading the file (`set -a; . ./.env`) sees the same values except for embedded newlines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "`": "\\`", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", '"': '"', "$": "$", "`": "`", "n": "\n", "r": "\r"}


class EnvFileError(ValueError):
    """A line of a .env file cannot be parsed. The message never includes a value."""


def quote(value: str) -> str:
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def render(values: Mapping[str, str]) -> str:
    """The file's text for these variables, in the given order."""
    lines = []
    for name, value in values.items():
        if not _NAME.match(name):
            raise EnvFileError(f"invalid variable name {name!r}")
        lines.append(f"{name}={quote(value)}\n")
    return "".join(lines)


def parse(text: str) -> dict[str, str]:
    """Inverse of `render`. Blank lines and `#` comments are ignored; unquoted values are taken as is."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise EnvFileError(f"line {number}: expected NAME=VALUE")
        if rest.startswith('"'):
            result[name] = _unquote(rest, number)
        elif rest.startswith("'") and rest.endswith("'") and len(rest) >= 2:
            result[name] = rest[1:-1]
        else:
            result[name] = rest
    return result


def _unquote(rest: str, number: int) -> str:
    out: list[str] = []
    i = 1
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and i + 1 < len(rest):
            nxt = rest[i + 1]
            out.append(_UNESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == '"':
            if rest[i + 1 :].strip():
                raise EnvFileError(f"line {number}: unexpected text after the closing quote")
            return "".join(out)
        out.append(ch)
        i += 1
    raise EnvFileError(f"line {number}: missing closing quote")
