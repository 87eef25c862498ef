"""Shared helpers for Tako's own config files: TOML reading, key paths, line lookup, errors, atomic writes.

Errors built here always name the file and the key path; the line is looked up in the file's text on a
best-effort basis (TOML parsers do not keep positions), and is exact for TOML syntax errors.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from tako import fsutil
from tako.errors import ConfigError

KeyPath = Sequence[str | int]

MAX_NAME_LENGTH = 63
NAME_RULES = "names are 1-63 characters of a-z, 0-9 and '-', start with a letter and do not end with '-'"
_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_TABLE_LINE = re.compile(rf"^\s*\[\s*(?P<key>{_DOTTED_KEY})\s*\]\s*(?:#.*)?$")
_ARRAY_TABLE_LINE = re.compile(rf"^\s*\[\[\s*(?P<key>{_DOTTED_KEY})\s*\]\]\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*(?P<key>{_DOTTED_KEY})\s*=")
_PART = re.compile(_KEY_PART)


# -- names of apps, environments and servers -----------------------------------------------------------


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid app, environment or server name, or None when it is."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters (got {len(name)})"
    if not name[0].isascii() or not name[0].islower() or not name[0].isalpha():
        return "must start with a lowercase letter (a-z)"
    if name.endswith("-"):
        return "must not end with '-'"
    if not _NAME.match(name):
        return "may contain only lowercase letters, digits and '-'"
    return None


def is_valid_name(name: str) -> bool:
    return name_problem(name) is None


def sanitize_name(text: str) -> str | None:
    """Turn any text (a package or directory name) into a valid name, or None if nothing is left."""
    lowered = text.strip().lower()
    lowered = lowered.rsplit("/", 1)[-1]  # npm scopes: "@org/web-app" -> "web-app"
    cleaned = re.sub(r"[^a-z0-9]+", "-", lowered).strip("-")
    if not cleaned:
        return None
    if not cleaned[0].isalpha():
        cleaned = f"app-{cleaned}"
    return cleaned[:MAX_NAME_LENGTH].rstrip("-")


# -- key paths and lines -------------------------------------------------------------------------------


def format_key(path: KeyPath) -> str:
    """`("envs", "production", "routes", 1)` -> `envs.production.routes[1]`; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.match(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out += f".{text}" if out else text
    return out


def did_you_mean(word: str, candidates: Iterable[str], *, template: str = "did you mean {!r}?") -> str | None:
    """A hint naming the closest candidate, or None when nothing is close."""
    options = sorted(set(candidates))
    close = get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        # Case-only differences (`Name`) and abbreviations (`idle`) fall below difflib's cutoff.
        lowered = word.lower()
        close = [c for c in options if c.lower() == lowered]
        close = close or [c for c in options if len(lowered) >= 3 and c.lower().startswith(lowered)]
    return template.format(close[0]) if close else None


def _split_dotted(text: str) -> list[str]:
    parts = []
    for match in _PART.finditer(text):
        raw = match.group(0)
        if raw[0] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif raw[0] == "'":
            raw = raw[1:-1]
        parts.append(raw)
    return parts


def find_line(text: str, path: KeyPath) -> int | None:
    """Best-effort 1-based line where `path` is defined: the deepest matching key or table header.

    Understands `[table]`, `[[array.of.tables]]` (their index is part of the path) and `a.b = ...` keys.
    Returns None when nothing in the file matches the start of the path.
    """
    want = list(path)
    best_line: int | None = None
    best_len = 0
    table: list[str | int] = []
    array_counts: dict[tuple[str, ...], int] = {}
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        found: list[str | int] | None = None
        if m := _ARRAY_TABLE_LINE.match(line):
            name = tuple(_split_dotted(m.group("key")))
            index = array_counts.get(name, 0)
            array_counts[name] = index + 1
            table = [*name, index]
            found = table
        elif m := _TABLE_LINE.match(line):
            table = list(_split_dotted(m.group("key")))
            found = table
        elif m := _KEY_LINE.match(line):
            found = [*table, *_split_dotted(m.group("key"))]
            rest = line[m.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
        if found is None:
            continue
        length = 0
        for have, need in zip(found, want, strict=False):
            if have != need:
                break
            length += 1
        # The found key must lie on the wanted path (`[envs.staging]` says nothing about `envs.production`),
        # or lie below all of it (`[env.production]` is where the unknown table `env` is).
        on_path = length == len(found) or length == len(want)
        if on_path and length > best_len:
            best_len, best_line = length, number
    return best_line


@dataclass(frozen=True)
class Source:
    """One config file being validated: builds ConfigErrors that name it, the key and the line."""

    file: str
    text: str

    def error(self, path: KeyPath, message: str, *, hint: str | None = None) -> ConfigError:
        line = find_line(self.text, path) if path else None
        return ConfigError(self.file, message, key=format_key(path) or None, line=line, hint=hint)

    def check_keys(
        self, table: dict[str, Any], path: KeyPath, allowed: Iterable[str], what: str = "key"
    ) -> None:
        """Reject keys of `table` that are not in `allowed`, with a did-you-mean hint."""
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                if hint is None and allowed:
                    hint = "allowed: " + ", ".join(allowed)
                raise self.error([*path, key], f"unknown {what}", hint=hint)

    def table(self, value: Any, path: KeyPath) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {describe(value)}")
        return value

    def string(self, value: Any, path: KeyPath, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {describe(value)}")
        if not allow_empty and not value.strip():
            raise self.error(path, "must not be empty")
        return value

    def integer(self, value: Any, path: KeyPath, *, minimum: int, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(path, f"expected {what}, got {describe(value)}")
        return value

    def string_list(self, value: Any, path: KeyPath) -> list[str]:
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {describe(value)}")
        return [self.string(item, [*path, i]) for i, item in enumerate(value)]


def describe(value: Any) -> str:
    """A short description of a TOML value for error messages (type, and the value when short)."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if isinstance(value, dict):
        return "a table"
    for kind, name in kinds.items():
        if type(value) is kind:
            text = repr(value)
            return f"{name} ({text})" if len(text) <= 40 else name
    return type(value).__name__


def read_toml(path: Path) -> tuple[dict[str, Any], Source]:
    """Parse a TOML file into plain dicts. Syntax errors become ConfigErrors carrying the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "is not valid UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    source = Source(str(path), text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)" (3.14 also has .lineno); move the line up front.
        message = str(exc)
        position = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
        line = getattr(exc, "lineno", None) or (int(position.group(1)) if position else None)
        reason = message[: position.start()] if position else message
        reason = re.sub(r"\s*\(at end of document\)$", "", reason)
        if line is None and message.endswith("(at end of document)"):
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
        raise ConfigError(str(path), f"invalid TOML: {reason}", line=line) from exc
    return data, source


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace `path` with `text` atomically; an existing file keeps its mode, a new one gets `mode`."""
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777
    fsutil.write_atomic(path, text.encode("utf-8"), mode=mode)
