"""The HTTP/1.1 parsers of the proxy: `parser_types()` gives the compiled binding's (_http1.pyx, llhttp with
its callbacks in C) where it is wanted, current and loads, else `RequestParser` and `ResponseParser` below,
the same on httptools (which bundles the same llhttp).

Both call their protocol once per message head, besides `on_message_begin`, `on_body` and
`on_message_complete`: a request's `on_head(method, url, version, keep_alive, upgrade, block, specials,
count, size)`, a response's `on_head(status, reason, keep_alive, upgrade, block, specials)` (see _http1.pyx
for the arguments; wire.py's `RequestSink` and `ResponseSink` declare the calls); and both raise
httptools' errors. tests/unit/test_http1_parser.py holds the two to the same results.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

import httptools

from tako.server.proxy.compiled import HTTP1_BINDING, PURE_PYTHON_ENV, binding_problem, mode

_CRLF = b"\r\n"


class HeaderTable:
    """How a parser treats header names (as _http1.HeaderTable): `special`: lower-case name -> kind; other
    names starting with `prefix` (if not empty) are `prefix_kind`; the rest `pass_kind`. Headers of
    `pass_kind` and of the kinds in `forwarded` go into the block, `drop_kind` ones nowhere."""

    __slots__ = ("drop_kind", "forwarded", "pass_kind", "prefix", "prefix_kind", "special")

    def __init__(
        self,
        special: dict[bytes, int],
        prefix: bytes,
        prefix_kind: int,
        pass_kind: int,
        drop_kind: int,
        forwarded: Collection[int],
    ) -> None:
        self.special = {name.lower(): kind for name, kind in special.items()}
        self.prefix = prefix.lower()
        self.prefix_kind = prefix_kind
        self.pass_kind = pass_kind
        self.drop_kind = drop_kind
        self.forwarded = frozenset(forwarded)

    def kind(self, name: bytes) -> tuple[int, bool]:
        """The kind of header `name`, and whether its line is forwarded."""
        lname = name.lower()
        kind = self.special.get(lname)
        if kind is not None:
            return kind, kind == self.pass_kind or kind in self.forwarded
        if self.prefix and lname.startswith(self.prefix):
            return self.prefix_kind, self.prefix_kind == self.pass_kind
        return self.pass_kind, True


class RequestParser:
    """The request parser on httptools: its per-header callbacks gather what the binding gathers in C."""

    __slots__ = (
        "_count",
        "_in_head",
        "_lines",
        "_parser",
        "_protocol",
        "_size",
        "_specials",
        "_table",
        "_url",
        "on_body",
        "on_message_complete",
    )

    def __init__(self, protocol: Any, table: HeaderTable) -> None:
        self._protocol = protocol
        self._table = table
        self._url = b""
        self._lines: list[bytes] = []
        self._specials: list[Any] = []
        self._count = 0
        self._size = 0
        self._in_head = False
        # The body callbacks go straight to the protocol.
        self.on_body = protocol.on_body
        self.on_message_complete = protocol.on_message_complete
        self._parser = self._make_parser()

    def _make_parser(self) -> Any:
        return httptools.HttpRequestParser(self)

    def feed_data(self, data: bytes) -> None:
        self._parser.feed_data(data)

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._lines = []
        self._specials = []
        self._count = 0
        self._size = 0
        self._in_head = True
        self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field of a chunked body
        self._count += 1
        self._size += len(name) + len(value) + 4
        table = self._table
        kind, forward = table.kind(name)
        if kind != table.pass_kind and kind != table.drop_kind:
            self._specials.append(kind)
            self._specials.append(value)
        if forward:
            self._lines.extend((name, b": ", value, _CRLF))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        self._protocol.on_head(
            parser.get_method(),
            self._url,
            parser.get_http_version(),
            parser.should_keep_alive(),
            parser.should_upgrade(),
            b"".join(self._lines),
            self._specials,
            self._count,
            self._size,
        )


class ResponseParser(RequestParser):
    """The response parser on httptools: the request parser's gathering, with a status and reason."""

    __slots__ = ()

    def _make_parser(self) -> Any:
        return httptools.HttpResponseParser(self)

    def on_status(self, reason: bytes) -> None:
        self._url += reason

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        self._protocol.on_head(
            parser.get_status_code(),
            self._url,
            parser.should_keep_alive(),
            parser.should_upgrade(),
            b"".join(self._lines),
            self._specials,
        )


def parser_types() -> tuple[type[RequestParser], type[ResponseParser], type[HeaderTable]]:
    """The compiled binding's `RequestParser`, `ResponseParser` and `HeaderTable` where it is wanted, current
    and loads, and the proxy's modules run compiled (it calls the connections through wire.py's compiled
    classes); else the ones above."""
    if (
        os.environ.get(PURE_PYTHON_ENV, "") in ("", "0")
        and mode() == "compiled"
        and binding_problem(HTTP1_BINDING) is None
    ):
        try:
            from tako.server.proxy._http1 import HeaderTable as CompiledTable
            from tako.server.proxy._http1 import RequestParser as CompiledRequests
            from tako.server.proxy._http1 import ResponseParser as CompiledResponses
        except ImportError:
            pass
        else:
            return CompiledRequests, CompiledResponses, CompiledTable
    return RequestParser, ResponseParser, HeaderTable
