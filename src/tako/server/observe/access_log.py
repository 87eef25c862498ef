"""Access logs: one JSON line per request per app in `<data_dir>/apps/<app>/shared/logs/access.log`.

The proxy hands `AccessLog.add` one tuple per finished request (no formatting, no I/O on the hot path).
Every `FLUSH_INTERVAL` seconds, or at `MAX_BATCH` entries, the batch becomes JSON lines grouped by app and
goes to a sink: in the main process `AccessFiles.write` (appends, rotates like `app.log`), in a data-plane
worker a message to the main process (`workers.messages.AccessLines`), which writes it there. One writer
per file is what lets rotation be a plain rename: several processes appending and rotating the same file
would need a lock around every rotation. The cost is one more copy of the lines over the worker channel,
at most ten messages a second per worker.

A line: `time` (UTC, ms), `app`, `host`, `method`, `path` (`query` too with `[access_log] query = true`),
`status`, `bytes_in`, `bytes_out`, `duration_ms`, `upstream_ms` (from the request sent whole to the end
of the response; absent when no instance was asked), `instance`, `client`, `request_id`, `tls`; for a
WebSocket (any tunnel after a 101) `websocket: true`, its lifetime as `duration_ms` and the bytes that went
through it. A request whose client left before its response completed has status 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

LOG_NAME = "access.log"
FLUSH_INTERVAL = 0.1  # seconds a line waits at most before it is written
# Entries that make a batch be formatted and written at once. Formatting holds the event loop (2 µs a
# line): 1024 lines at a time doubled tako-server's p99 latency under load (bench/proxy), 256 do not.
MAX_BATCH = 256

# One finished request, as ClientConnection._count builds it (positions are read in `_line`).
Entry = tuple[Any, ...]
Batch = dict[str, str]  # app -> its JSON lines, each ending with a newline


class AccessLog:
    """This process's pending access lines, formatted and handed to `sink` off the hot path."""

    __slots__ = ("_entries", "_loop", "_query", "_second", "_second_text", "_sink", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: Callable[[Batch], None], *, query: bool = False
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._query = query
        self._entries: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

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
        wall = time.time() - self._loop.time()  # loop time -> UNIX time, once per batch
        lines: dict[str, list[str]] = {}
        for entry in entries:
            lines.setdefault(entry[0], []).append(self._line(entry, wall))
        self._sink({app: "\n".join(text) + "\n" for app, text in lines.items()})

    def _line(self, entry: Entry, wall: float) -> str:
        # Built as text rather than through a dict and json.dumps (6 µs a line, more than the proxy's whole
        # work for a request; bench/proxy/hotpath.py --access-log). Only the target comes from the client
        # unchecked, and goes through JSON escaping when it holds anything unusual: the host matched a route
        # (a hostname), the parser accepts known methods only, ids and addresses are the proxy's own or
        # checked (observe/request_id.py).
        (app, started, ended, sent_at, status, host, method, url, bytes_in, bytes_out) = entry[:10]
        instance, client, request_id, tls, websocket = entry[10:]
        path, _, query = url.partition(b"?")
        asked = f',"query":{_json_text(query)}' if self._query and query else ""
        upstream = f',"upstream_ms":{(ended - sent_at) * 1000:.3f}' if sent_at else ""
        tail = ',"websocket":true}' if websocket else "}"
        return (
            f'{{"time":"{self._time(started + wall)}","app":"{app}","host":"{host}",'
            f'"method":"{method.decode()}","path":{_json_text(path)}{asked},"status":{status},'
            f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},"duration_ms":{(ended - started) * 1000:.3f}'
            f'{upstream},"instance":{_quoted(instance)},"client":"{client.decode()}",'
            f'"request_id":{_quoted(request_id)},"tls":{"true" if tls else "false"}{tail}'
        )

    def _time(self, when: float) -> str:
        """UTC with milliseconds (`2026-12-06T18:59:01.123Z`); the part up to the second made once."""
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((when - second) * 1000):03d}Z"

    def close(self) -> None:
        """Write what is pending (at shutdown)."""
        self.flush()


_PLAIN = re.compile(r"[ -~]*\Z").match  # printable ASCII
_PLAIN_BYTES = re.compile(rb"[ -~]*\Z").match


def _quoted(value: bytes | str | None) -> str:
    """A value the proxy made or checked (no quotes, backslashes or control characters) as JSON."""
    if value is None:
        return "null"
    return f'"{value.decode() if isinstance(value, bytes) else value}"'


def _json_text(value: bytes | str | None) -> str:
    """`value` as a JSON string (null for None): as it is when plain, escaped by json otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bytes):
        if _PLAIN_BYTES(value) is None:
            return json.dumps(value.decode("latin-1"))
        value = value.decode("ascii")
    elif _PLAIN(value) is None:
        return json.dumps(value)
    if '"' in value or "\\" in value:
        return json.dumps(value)
    return f'"{value}"'


class AccessFiles:
    """The main process's access.log files, one per app, appended and rotated (`access.log.1` ...)."""

    def __init__(self, data_dir: Path, *, max_bytes: int, backups: int) -> None:
        self.apps_dir = data_dir / "apps"
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, tuple[BinaryIO, int]] = {}  # app -> open file, its size

    def write(self, batch: Mapping[str, str]) -> None:
        for app, text in batch.items():
            self._append(app, text.encode())

    def _append(self, app: str, data: bytes) -> None:
        opened = self._files.get(app)
        try:
            if opened is not None and os.fstat(opened[0].fileno()).st_nlink == 0:
                self._close(app)  # the app was deleted (and perhaps deployed again): a new file
                opened = None
            if opened is None:
                opened = self._open(app)
                if opened is None:
                    return  # the app is gone (deleted): its lines are dropped, its dir not made again
            f, size = opened
            f.write(data)
            f.flush()
            size += len(data)
            if self.max_bytes and size >= self.max_bytes:
                self._close(app)
                self._rotate(self.apps_dir / app / "shared" / "logs")
            else:
                self._files[app] = (f, size)
        except OSError:
            # A full or read-only disk must not take the data plane down: these lines are lost.
            self._close(app)

    def _open(self, app: str) -> tuple[BinaryIO, int] | None:
        if not (self.apps_dir / app).is_dir():
            return None
        directory = self.apps_dir / app / "shared" / "logs"
        directory.mkdir(parents=True, exist_ok=True)
        f = open(directory / LOG_NAME, "ab")  # noqa: SIM115 - kept open between batches
        opened = self._files[app] = (f, f.tell())
        return opened

    def _rotate(self, directory: Path) -> None:
        path = directory / LOG_NAME
        if self.backups <= 0:
            with contextlib.suppress(OSError):
                path.unlink()
            return
        for n in range(self.backups - 1, 0, -1):
            older = directory / f"{LOG_NAME}.{n}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, directory / f"{LOG_NAME}.{n + 1}")
        with contextlib.suppress(OSError):
            os.replace(path, directory / f"{LOG_NAME}.1")

    def _close(self, app: str) -> None:
        opened = self._files.pop(app, None)
        if opened is not None:
            with contextlib.suppress(OSError):
                opened[0].close()

    def close(self) -> None:
        for app in list(self._files):
            self._close(app)
