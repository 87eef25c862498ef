"""The deploy lock's holder line, and when a lock left behind is ours to break."""

from __future__ import annotations

import getpass
import os
import socket
from datetime import UTC, datetime

import psutil


def lock_holder(version: str, doing: str = "deploying") -> str:
    """`user@host pid N <doing> <version> since <UTC time>`: who holds the lock, for the next one to read
    (`stale_own_lock` reads the first three words)."""
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} {doing} {version} since {when}"


def stale_own_lock(holder: str) -> bool:
    """Whether a lock holder line names a deploy from this machine and user whose process is gone.

    Such a lock was left by an interrupted deploy (its connection was lost before it could clean up),
    so it is safe to break. Anyone else's lock, or one of a live tako process here, is never broken.
    """
    parts = holder.split()
    if len(parts) < 3 or parts[1] != "pid" or not parts[2].isdigit():
        return False
    if parts[0] != f"{getpass.getuser()}@{socket.gethostname()}":
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:  # the deploy that took it is gone: the lock is stale
        return True
    except psutil.Error:  # cannot tell (e.g. access denied): leave it alone
        return False
    return "tako" not in cmdline  # the pid was reused by something else
