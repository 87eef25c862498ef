"""`BodyBuffer`: a request body held by the proxy before it goes to an instance.

Bytes stay in memory up to a limit, then move to an anonymous temporary file (O_TMPFILE, or created and
unlinked at once: it has no name, so a crash leaves nothing behind and the space is freed when it closes).
The buffered body is read back in chunks as the instance's connection drains, so forwarding it never
holds more than one chunk beyond what is already buffered.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

# A read of the temporary file per upstream drain: the size of the upstream transport's default
# high-water mark, so one read refills what the instance took.
READ_CHUNK = 64 * 1024


class BodyBuffer:
    """Append-only while the body arrives; then read once, in order (memory chunks first, then the file)."""

    __slots__ = ("_file", "chunks", "directory", "memory", "memory_limit", "size")

    def __init__(self, memory_limit: int, directory: Path) -> None:
        self.memory_limit = memory_limit
        self.directory = directory
        self.chunks: list[bytes] = []
        self.memory = 0  # bytes in `chunks`
        self.size = 0  # bytes appended in all
        self._file: BinaryIO | None = None

    @property
    def spilled(self) -> bool:
        """Whether the body went to a temporary file."""
        return self._file is not None

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self.chunks.append(data)
        self.memory += len(data)
        if self.memory > self.memory_limit:
            self._spill()

    def take_chunks(self) -> list[bytes]:
        """The bytes held in memory, handed over (the buffer no longer holds them)."""
        chunks = self.chunks
        self.chunks = []
        self.memory = 0
        return chunks

    def rewind(self) -> None:
        """The body is complete: reading starts (from the file, if it spilled)."""
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)

    def read(self, n: int = READ_CHUNK) -> bytes:
        """The next bytes to forward after `take_chunks()`: b"" once everything was read."""
        if self._file is None:
            return b""
        return self._file.read(n)

    def close(self) -> None:
        self.chunks = []
        self.memory = 0
        if self._file is not None:
            self._file.close()
            self._file = None

    def _spill(self) -> None:
        # Writing to the file blocks the event loop briefly, as any disk write does: the page cache absorbs
        # it (a body goes there only past memory_limit, read by read as it arrives).
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115  # lives until close()
        file.writelines(self.chunks)
        self.chunks = []
        self.memory = 0
        self._file = file


def default_directory() -> Path:
    """Where bodies spill when the server was not given a directory (tests, benchmarks)."""
    return Path(tempfile.gettempdir()) / f"tako-bodies-{os.getuid()}"
