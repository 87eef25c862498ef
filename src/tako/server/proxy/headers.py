"""`HeaderKinds`: what the proxy does with a header name, looked up once per distinct spelling;
`without_headers`, which drops the headers a Connection header named from pieces (name, ": ", value,
CRLF); and for header lines as the parsers give them (byte strings that joined are "Name: value\r\n"
lines: a request's `RequestCycle.pieces`, a response head's lines), `header_lines`, `as_pieces` and
`without_lines`.

Both directions classify every header of every message; lower-casing each name and looking it up costs
more than one dict lookup of the name as received. The cache is keyed by that spelling, holds short names
only, is bounded, and starts over when full (peers choose the names).
"""

from __future__ import annotations

from collections.abc import Collection

PASS = -1  # the kind of any header without special handling: passed on unchanged

_CACHE_MAX = 512
_CACHE_NAME_MAX = 64


class HeaderKinds:
    """Header name → kind. The hot path is `kinds.cache.get(name)`, then `classify(name)` on a miss."""

    __slots__ = ("_prefix", "_prefix_kind", "_special", "cache")

    def __init__(
        self, special: dict[bytes, int], *, prefix: bytes | None = None, prefix_kind: int = PASS
    ) -> None:
        self.cache: dict[bytes, int] = {}
        self._special = special  # lower-case name → kind
        self._prefix = prefix  # other lower-case names starting with this are prefix_kind
        self._prefix_kind = prefix_kind

    def classify(self, name: bytes) -> int:
        lname = name.lower()
        kind = self._special.get(lname)
        if kind is None:
            prefix = self._prefix
            kind = self._prefix_kind if prefix is not None and lname.startswith(prefix) else PASS
        if len(name) <= _CACHE_NAME_MAX:
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[name] = kind
        return kind


def header_lines(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The name and value of each line of a request's forwarded header lines. Written by the proxy as
    "Name: value\r\n" from what the parser took apart, so a name holds no colon and a value no CR or LF."""
    lines = b"".join(pieces).split(b"\r\n")
    lines.pop()  # after the last CRLF
    return [(name, value) for name, _, value in (line.partition(b": ") for line in lines)]


def as_pieces(lines: list[bytes]) -> list[bytes]:
    """Header lines (byte strings that joined are "Name: value\r\n" lines) as name, ": ", value, CRLF."""
    pieces: list[bytes] = []
    for name, value in header_lines(lines):
        pieces.extend((name, b": ", value, b"\r\n"))
    return pieces


def without_lines(pieces: list[bytes], names: Collection[bytes]) -> list[bytes]:
    """A request's forwarded header lines without those whose name (lower-case) is in `names`."""
    lines = header_lines(pieces)
    return [name + b": " + value + b"\r\n" for name, value in lines if name.lower() not in names]


def without_headers(pieces: list[bytes], names: list[bytes]) -> list[bytes]:
    """Drop the headers a Connection header named (pieces: name, ": ", value, CRLF; names: lower-case)."""
    kept: list[bytes] = []
    for i in range(0, len(pieces), 4):
        if pieces[i].lower() not in names:
            kept.extend(pieces[i : i + 4])
    return kept
