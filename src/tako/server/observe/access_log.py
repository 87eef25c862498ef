"""Access logs: one JSON line per request per app in `<data_dir>/apps/<app>/shared/logs/access.log`.

The proxy hands `AccessLog.add` one tuple per finished request (no formatting, no I/O on the hot path).
Every 100 ms, or at 256 entries, the batch becomes JSON lines grouped by app, as bytes (`AccessLog` is
compiled with the proxy, `tako.server.proxy.access_line`, and formats with the `_access_lines` binding
where it is built) and goes to a sink, `AccessFiles.write`: every data-plane process (the main process
and each worker) formats and appends its own lines, with O_APPEND and one write per batch, and they share
the rotation (see `AccessFiles`). Sending a worker's lines to the main process to be written there would
cost more than formatting them: 1.0 µs a line to encode and decode them on the worker channel, on a main
process that serves requests too, where formatting one took 1.25 µs as compiled Python and takes about
3,000 machine instructions in the binding.

A line: `time` (UTC, ms), `app`, `host`, `method`, `path` (`query` too with `[access_log] query = true`),
`status`, `bytes_in`, `bytes_out`, `duration_ms`, `upstream_ms` (from the request sent whole to the end
of the response; absent when no instance was asked), `request_id`, `instance`, `client`, `tls`; for a
WebSocket (any tunnel after a 101) `websocket: true`, its lifetime as `duration_ms` and the bytes that went
through it. A request whose client left before its response completed has status 499.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

from tako.server.proxy.access_line import AccessLog as AccessLog  # compiled with the proxy, as the lines
from tako.server.proxy.access_line import Batch as Batch
from tako.server.proxy.access_line import Entry as Entry

LOG_NAME = "access.log"


class AccessFiles:
    """One process's handles on every app's access.log, appended and rotated (`access.log.1` ...).

    Every data-plane process (the main process and each worker) has its own and writes the lines it
    formatted itself: no copy of them over the worker channel. The file is opened with O_APPEND and each
    batch is one write of whole lines, so the processes' lines never interleave. Rotation is shared: the
    writer whose batch takes the file to `max_bytes` rotates it under an exclusive lock on the logs
    directory, unless another did first (the name no longer leads to the file it holds); every writer checks
    before a batch that the name still leads to its file and reopens it otherwise, so at most one batch per
    writer lands in the file just rotated."""

    def __init__(self, data_dir: Path, *, max_bytes: int, backups: int) -> None:
        self.apps_dir = data_dir / "apps"
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, int] = {}  # app -> its access.log's open file descriptor

    def write(self, batch: Mapping[str, bytes]) -> None:
        for app, lines in batch.items():
            self._append(app, lines)

    def _append(self, app: str, data: bytes) -> None:
        directory = self.apps_dir / app / "shared" / "logs"
        try:
            fd = self._files.get(app)
            if fd is not None and not _is_current(directory / LOG_NAME, fd):
                self._close(app)  # rotated by another writer, or the app deleted (perhaps deployed again)
                fd = None
            if fd is None:
                fd = self._open(app, directory)
                if fd is None:
                    return  # the app is gone (deleted): its lines are dropped, its dir not made again
            while data:  # one write for a regular file, bar a full disk
                data = data[os.write(fd, data) :]
            if self.max_bytes and os.fstat(fd).st_size >= self.max_bytes:
                self._rotate(app, directory, fd)
        except OSError:
            # A full or read-only disk must not take the data plane down: these lines are lost.
            self._close(app)

    def _open(self, app: str, directory: Path) -> int | None:
        if not (self.apps_dir / app).is_dir():
            return None
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._files[app] = fd
        return fd

    def _rotate(self, app: str, directory: Path, fd: int) -> None:
        """Rotate the file `fd` holds, unless another writer already did; this writer reopens it next time."""
        lock = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close
            if _is_current(directory / LOG_NAME, fd):
                self._rename_all(directory)
        finally:
            os.close(lock)
            self._close(app)

    def _rename_all(self, directory: Path) -> None:
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
        fd = self._files.pop(app, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for app in list(self._files):
            self._close(app)


def _is_current(path: Path, fd: int) -> bool:
    """Whether `path` still names the file `fd` holds (not rotated away, not deleted)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return named.st_ino == held.st_ino and named.st_dev == held.st_dev
