"""App log files: `<data_dir>/apps/<app>/shared/logs/app.log`, one line per output line, size-rotated.

Every line is prefixed with `[<instance id>] ` (or `[tako] ` for the server's own events about the app),
which is the layout `tako logs` tails over SSH.

Several processes append to one app's log: tako-server (its events) and one log relay per instance (the
instance's output, see relay.py), which outlive tako-server. Each writer appends (O_APPEND: whole
writes never interleave), follows a rotation made by another writer (the path names a new file), and
rotates only under an flock of the log directory, after checking again that the file is still too big.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import BinaryIO

LOG_NAME = "app.log"
MAX_PARTIAL_LINE = 64 * 1024
TAIL_READ = 64 * 1024  # how much of the log's end is read to find an instance's last lines


class AppLog:
    """Appends lines to one app's log file and rotates it (`app.log.1` ... `app.log.<backups>`)."""

    def __init__(self, directory: Path, *, max_bytes: int, backups: int) -> None:
        self.directory = directory
        self.path = directory / LOG_NAME
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._inode = 0

    def _open(self) -> BinaryIO:
        if self._file is not None and not self._rotated_by_another():
            return self._file
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the app's lifetime
        self._inode = os.fstat(self._file.fileno()).st_ino
        return self._file

    def _rotated_by_another(self) -> bool:
        """One stat per write: cheap next to the write itself, and the only way to see another writer's
        rotation (an inotify watch per writer would cost more than it saves at log rates)."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def write(self, prefix: str, lines: list[bytes]) -> None:
        """Write `[prefix] line` for each line and flush, so a tail sees it at once."""
        if not lines:
            return
        head = f"[{prefix}] ".encode()
        data = b"".join(head + line + b"\n" for line in lines)
        try:
            f = self._open()
            f.write(data)
            f.flush()
            if self.max_bytes and os.fstat(f.fileno()).st_size >= self.max_bytes:
                self._rotate()
        except OSError:
            # A full or read-only disk must not take the writer down; the lines are lost.
            self.close()

    def event(self, message: str) -> None:
        self.write("tako", [message.encode()])

    def _rotate(self) -> None:
        self.close()
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Another writer may have rotated while this one waited for the lock.
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_size < self.max_bytes:
                    return
            self._shift()
        finally:
            os.close(fd)  # releases the lock

    def _shift(self) -> None:
        if self.backups <= 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return
        for n in range(self.backups - 1, 0, -1):
            src = self.directory / f"{LOG_NAME}.{n}"
            if src.exists():
                os.replace(src, self.directory / f"{LOG_NAME}.{n + 1}")
        with contextlib.suppress(OSError):
            os.replace(self.path, self.directory / f"{LOG_NAME}.1")

    def tail(self, prefix: str, count: int) -> list[str]:
        """The last `count` lines written with `prefix` (read from the end of the current file)."""
        head = f"[{prefix}] ".encode()
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_READ))
                data = f.read()
        except OSError:
            return []
        mine = [line[len(head) :] for line in data.split(b"\n") if line.startswith(head)]
        return [line.decode(errors="replace") for line in mine[-count:]]

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class LineSplitter:
    """Turns output chunks into complete lines."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._partial + chunk
        parts = data.split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > MAX_PARTIAL_LINE:
            parts.append(self._partial)
            self._partial = b""
        return [p.rstrip(b"\r") for p in parts]

    def flush(self) -> list[bytes]:
        lines = [self._partial] if self._partial else []
        self._partial = b""
        return lines
