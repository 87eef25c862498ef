"""One tako-server per data dir: an exclusive flock on `<data_dir>/tako-server.lock`, which holds its pid.

The lock is taken before anything else (orphan sweep, state, sockets) and kept for the life of the process.
The kernel drops it when the process dies, SIGKILL included, so it is never stale: whoever can read the
file (the service script, as root or as tako) learns whether a server runs (`flock -n` fails) and its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

from tako.errors import DataDirInUse, TakoError

LOCK_NAME = "tako-server.lock"
# The service script's `flock -n -s` probe holds a shared lock for a moment (about a millisecond): a server
# starting right then retries this long before it concludes that another server holds the lock.
PROBE_GRACE = 0.5
_RETRY = 0.02
PID_WIDTH = 16  # the pid, space-padded, and a newline


class DataDirLock:
    """The held lock. `release()` at the very end of shutdown, after the instances are stopped."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    async def acquire(cls, data_dir: Path) -> DataDirLock:
        path = data_dir / LOCK_NAME
        try:
            # O_CLOEXEC: an instance (or any child) must never hold the lock after tako-server is gone.
            # 0640: readable by root and tako's group, not by apps running as their own uids (a lock they
            # took would keep tako-server from starting).
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise TakoError(
                f"cannot open the data dir lock {path}: {exc.strerror}",
                hint=f"tako-server's user needs to read and write it (chown it to that user, or remove it "
                f"while no tako-server runs on {data_dir})",
            ) from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_GRACE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if loop.time() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"pid {holder}" if holder else "pid not yet written"
                    raise DataDirInUse(
                        f"another tako-server ({who}) is running on the data dir {data_dir}",
                        hint="stop it first (tako-server-service stop, or systemctl stop tako-server); "
                        "a second server needs its own data dir (--data-dir), socket and ports",
                    ) from None
                await asyncio.sleep(_RETRY)
        return cls._holding(path, fd)

    @classmethod
    def inherit(cls, data_dir: Path, fd: int) -> DataDirLock:
        """The lock handed over by the running tako-server (server/handover.py): the same open file
        description, so the flock is shared by exactly the two processes and no third server can start.
        The pid in the file becomes this process's (the service script reads it)."""
        return cls._holding(data_dir / LOCK_NAME, fd)

    @classmethod
    def _holding(cls, path: Path, fd: int) -> DataDirLock:
        # Always the same 16 bytes, written over the old ones: no block to allocate on a full disk after the
        # first start, and a reader sees a whole pid (readers ignore the padding).
        try:
            os.pwrite(fd, f"{os.getpid():<15}\n".encode(), 0)
            os.ftruncate(fd, PID_WIDTH)
        except OSError as exc:
            os.close(fd)
            raise TakoError(f"cannot write the pid into {path}: {exc.strerror}") from exc
        return cls(path, fd)

    @property
    def fd(self) -> int:
        """The lock's descriptor, to hand over to a new tako-server."""
        assert self._fd is not None, "the lock was released"
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
