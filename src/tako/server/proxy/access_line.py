"""Access log lines: `AccessLog` queues one entry per finished request and hands batches of JSON lines by
app to a sink (`observe.access_log.AccessFiles.write`); a formatter makes the lines.

The formatter is the `_access_lines` binding's (_access_lines.pyx: each line written into a C buffer,
about 1,000 machine instructions a line) where it is built and current, else `LineFormatter` here; both
give the same bytes. This module is compiled with Cython where possible too (typed by access_line.pxd, see
compiled.py): the client connection's `add` per request is a C call. As compiled Python `LineFormatter`
formats the numbers as C integers (the durations in whole microseconds, written as milliseconds with three
decimals) and escapes the text parts only when they need it; it costs about 6,600 instructions a line
(callgrind over bench/proxy/hotpath.py --access-log).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from tako.server.proxy import native
from tako.server.proxy.compiled import ACCESS_BINDING, PURE_PYTHON_ENV, binding_problem

FLUSH_INTERVAL = 0.1  # seconds a line waits at most before it is written
# Entries that make a batch be formatted and written at once. Formatting holds the event loop: 1024 lines
# at a time (1 µs a line then) doubled tako-server's p99 latency under load (bench/proxy), 256 did not.
MAX_BATCH = 256

# One finished request, as ClientConnection._count builds it: (app, host, method, started, ended, sent_at,
# status, url, bytes_in, bytes_out, request_id, instance, client, tls, websocket). The parts that repeat
# are slices (`[:3]`, `[11:]`): the keys of the parts of a line made once (`LineFormatter`).
Entry = tuple[Any, ...]
Batch = dict[str, bytes]  # app -> its JSON lines (ASCII), each ending with a newline

# The parts of a line made once are kept for this many apps/hosts/methods and instances/clients/tls;
# past it they are made again (many client addresses, or hosts under a wildcard route).
CACHE_MAX = 4096
_MILLIS = tuple(f"{n:03d}" for n in range(1000))  # the milliseconds of a time, by number
# Any byte but printable ASCII without quotes and backslashes: a value holding one needs JSON escaping.
_UNSAFE = re.compile(rb"[^ !#-\[\]-~]").search
# Compiled, `_plain` checks a value in a loop of C compares; a regular expression search is a Python call,
# 1,100 machine instructions for a path or a request id (callgrind over bench/proxy/hotpath.py
# --access-log). As Python the search stays, far faster there than a loop over the bytes.
_COMPILED = not __file__.endswith(".py")


class Formatter(Protocol):
    def format(self, entries: list[Any], wall: float) -> Batch: ...


def line_formatter(query: bool) -> Formatter:
    """The binding's formatter where it is wanted, current and loads; else `LineFormatter`."""
    if os.environ.get(PURE_PYTHON_ENV, "") in ("", "0") and binding_problem(ACCESS_BINDING) is None:
        try:
            from tako.server.proxy._access_lines import Formatter as CompiledFormatter
        except ImportError:
            pass
        else:
            formatter: Formatter = CompiledFormatter(query)
            return formatter
    return LineFormatter(query)


class AccessLog:
    """This process's pending access lines, formatted and handed to `sink` off the hot path."""

    __slots__ = ("_entries", "_formatter", "_loop", "_sink", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: Callable[[Batch], None], *, query: bool = False
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._formatter = line_formatter(query)
        self._entries: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, entry: Entry) -> None:
        """Per request: queue one entry (a flush is scheduled on the first of a batch)."""
        entries = self._entries
        entries.append(entry)
        if self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self.flush)
        elif len(entries) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries = self._entries
        if not entries:
            return
        self._entries = []
        wall = time.time() - native.now()  # the stamps' clock (native.now) -> UNIX time
        self._sink(self._formatter.format(entries, wall))

    def close(self) -> None:
        """Write what is pending (at shutdown)."""
        self.flush()


class LineFormatter:
    """Formats batches of entries; keeps the parts of a line that repeat from request to request."""

    __slots__ = ("heads", "query", "second", "stamp", "tails")

    def __init__(self, query: bool) -> None:
        self.query = query  # [access_log] query: add the query string
        self.second = -1  # the second `stamp` is for
        self.stamp = ""
        self.heads: dict[Any, str] = {}  # (app, host, method) -> from the time's `Z` to `"path":`
        self.tails: dict[Any, str] = {}  # (instance, client, tls, websocket) -> the line's end

    def format(self, entries: list[Any], wall: float) -> Batch:
        """The entries as JSON lines by app (`wall` turns native.now() stamps into UNIX time), each app's
        lines one bytes object ending with a newline. One loop that calls no Python function per line while
        nothing is new (a call per line cost 40% more as plain Python): the parts that repeat are looked up;
        only the target and the request id are checked, and escaped when they hold anything but printable
        ASCII without quotes or backslashes."""
        lines: dict[str, list[str]] = {}
        heads, tails, query = self.heads, self.tails, self.query
        for entry in entries:
            started = entry[3]
            when = started + wall
            if int(when) != self.second:
                self.new_second(when)
            head = heads.get(entry[:3]) or self.head(entry[:3])
            tail = tails.get(entry[11:]) or self.tail(entry[11:])
            url: bytes = entry[7]
            mark = url.find(b"?") if b"?" in url else -1  # most targets have no query: no method call
            path = url if mark < 0 else url[:mark]
            if _plain(path) if _COMPILED else _UNSAFE(path) is None:
                path_text = path.decode()
            else:
                path_text = _escaped(path)
            asked = f',"query":"{_escaped(url[mark + 1 :])}"' if query and mark >= 0 else ""
            ended = entry[4]
            sent_at = entry[5]
            upstream = ""
            if sent_at:
                up_us = max(int((ended - sent_at) * 1e6 + 0.5), 0)
                upstream = f',"upstream_ms":{up_us // 1000}.{_MILLIS[up_us % 1000]}'
            request_id = entry[10]
            if request_id is None:
                rid = "null"
            elif _plain(request_id) if _COMPILED else _UNSAFE(request_id) is None:
                rid = f'"{request_id.decode()}"'
            else:
                rid = f'"{_escaped(request_id)}"'
            status: int = entry[6]
            bytes_in: int = entry[8]
            bytes_out: int = entry[9]
            us = max(int((ended - started) * 1e6 + 0.5), 0)
            millis = int((when - self.second) * 1000)
            line = (
                f'{self.stamp}{_MILLIS[millis]}{head}"{path_text}"{asked},"status":{status},'
                f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
                f'"duration_ms":{us // 1000}.{_MILLIS[us % 1000]}{upstream},"request_id":{rid}{tail}'
            )
            text = lines.get(entry[0])
            if text is None:
                lines[entry[0]] = [line]
            else:
                text.append(line)
        # ASCII: bytes from the wire are read as latin-1 and escaped when not printable ASCII, and json.dumps
        # writes anything else as \u escapes.
        return {app: ("\n".join(text) + "\n").encode() for app, text in lines.items()}

    def new_second(self, when: float) -> None:
        """The line's start up to the second of `when`: `{"time":"2026-12-06T18:59:01.`."""
        self.second = int(when)
        self.stamp = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(self.second))

    def head(self, key: tuple[Any, ...]) -> str:
        """From the milliseconds' `Z` to `"path":` for one app, host and method (escaped: made once)."""
        heads = self.heads
        if len(heads) >= CACHE_MAX:
            heads.clear()
        app, host, method = key
        head = heads[key] = (
            f'Z","app":{json.dumps(app)},"host":{json.dumps(host)},'
            f'"method":{json.dumps(method.decode("latin-1"))},"path":'
        )
        return head

    def tail(self, key: tuple[Any, ...]) -> str:
        """From `"instance":` to the line's end for one instance, client, tls and websocket-or-not."""
        tails = self.tails
        if len(tails) >= CACHE_MAX:
            tails.clear()
        instance, client, tls, websocket = key
        end = ',"websocket":true}' if websocket else "}"
        tail = tails[key] = (
            f',"instance":{json.dumps(instance)},"client":{json.dumps(client.decode("latin-1"))},'
            f'"tls":{"true" if tls else "false"}{end}'
        )
        return tail


def _plain(value: bytes) -> bool:
    """Printable ASCII without quotes or backslashes: nothing to escape (as `_UNSAFE` finds nothing)."""
    for c in value:  # noqa: SIM110  (a loop of C compares when compiled; `all()` makes a generator)
        if c < 32 or c > 126 or c == 34 or c == 92:
            return False
    return True


def _escaped(value: bytes) -> str:
    """`value` (bytes from the wire, one character per byte) escaped for inside a JSON string."""
    return json.dumps(value.decode("latin-1"))[1:-1]
