"""A program run on a local pseudo-terminal, as from a user's terminal (for `tako run` with a TTY)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.processes import stop_process


@contextlib.contextmanager
def terminal_session(
    argv: list[str], *, env: Mapping[str, str], cwd: Path, rows: int, columns: int
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`argv` with a pseudo-terminal of `rows` x `columns` as its stdin, stdout and stderr; yields the
    process and the terminal's master side (what a terminal emulator reads and writes)."""
    master, slave = pty.openpty()
    set_window_size(slave, rows=rows, columns=columns)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**env, "TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        yield proc, master
    finally:
        stop_process(proc)
        os.close(master)


def set_window_size(fd: int, *, rows: int, columns: int) -> None:
    """Resize the terminal `fd` is a side of (either side will do)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def read_until(master: int, wanted: bytes, timeout: float = 60) -> bytes:
    """What the terminal shows until `wanted` appears (fails after `timeout` seconds)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {wanted!r} on the terminal; saw {seen!r}"
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"the terminal closed before {wanted!r}; saw {seen!r}"
            seen += chunk
    return seen
