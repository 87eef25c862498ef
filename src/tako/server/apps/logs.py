"""App log files: `<data_dir>/apps/<app>/shared/logs/app.log`, one line per output line, size-rotated.

Every line is prefixed with `[<instance id>] ` (or `[tako] ` for the server's own events about the app),
which is the layout `tako logs` tails over SSH.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from pathlib import Path
from typing import BinaryIO

LOG_NAME = "app.log"
MAX_PARTIAL_LINE = 64 * 1024


class AppLog:
    """Appends lines to one app's log file and rotates it (`app.log.1` ... `app.log.<backups>`)."""

    def __init__(self, directory: Path, *, max_bytes: int, backups: int) -> None:
        self.directory = directory
        self.path = directory / LOG_NAME
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the app's lifetime
            self._size = self._file.tell()
        return self._file

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
            self._size += len(data)
            if self.max_bytes and self._size >= self.max_bytes:
                self._rotate()
        except OSError:
            # A full or read-only disk must not take the supervisor down; the lines are lost.
            self.close()

    def event(self, message: str) -> None:
        self.write("tako", [message.encode()])

    def _rotate(self) -> None:
        self.close()
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

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class LineSplitter:
    """Turns output chunks into complete lines; keeps the last `tail_size` lines for error messages."""

    def __init__(self, tail_size: int = 20) -> None:
        self._partial = b""
        self.tail: deque[str] = deque(maxlen=tail_size)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._partial + chunk
        parts = data.split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > MAX_PARTIAL_LINE:
            parts.append(self._partial)
            self._partial = b""
        lines = [p.rstrip(b"\r") for p in parts]
        self._remember(lines)
        return lines

    def flush(self) -> list[bytes]:
        if not self._partial:
            return []
        lines = [self._partial]
        self._partial = b""
        self._remember(lines)
        return lines

    def _remember(self, lines: list[bytes]) -> None:
        for line in lines:
            self.tail.append(line.decode(errors="replace"))
