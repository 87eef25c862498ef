"""Health checks: one HTTP probe of an instance and the failure-count policy (docs/server.md).

Any answer below 500 is healthy. 2 consecutive failures take an instance out of rotation, 5 mark it dead;
one success brings it back. A probe that times out while the instance answers proxied requests is not a
failure (`Instance._health_loop`): the instance is busy, not hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum

OUT_OF_ROTATION_AFTER = 2
DEAD_AFTER = 5
PROBE_TIMEOUT = 2.0


class Verdict(enum.Enum):
    OK = "ok"
    FAILING = "failing"  # failed, but not yet enough to act
    OUT = "out"  # take out of rotation
    DEAD = "dead"  # replace the instance


class Probe(enum.Enum):
    PASSED = "passed"  # an answer below 500
    LATE = "late"  # no answer within the timeout
    FAILED = "failed"  # refused, reset, not HTTP, or 5xx


class HealthTracker:
    """Counts consecutive failures and turns each probe result into a verdict."""

    def __init__(self, out_after: int = OUT_OF_ROTATION_AFTER, dead_after: int = DEAD_AFTER) -> None:
        self.out_after = out_after
        self.dead_after = dead_after
        self.failures = 0

    def record(self, healthy: bool) -> Verdict:
        if healthy:
            self.failures = 0
            return Verdict.OK
        self.failures += 1
        if self.failures >= self.dead_after:
            return Verdict.DEAD
        if self.failures >= self.out_after:
            return Verdict.OUT
        return Verdict.FAILING


async def probe(port: int, path: str, *, host: str = "127.0.0.1", timeout: float = PROBE_TIMEOUT) -> bool:
    """GET `path` on the instance; True for any HTTP status below 500."""
    return await check(port, path, host=host, timeout=timeout) is Probe.PASSED


async def check(port: int, path: str, *, host: str = "127.0.0.1", timeout: float = PROBE_TIMEOUT) -> Probe:
    """GET `path` on the instance: passed (a status below 500), late (none within `timeout`) or failed."""
    try:
        passed = await asyncio.wait_for(_probe(host, port, path), timeout)
    except TimeoutError:
        return Probe.LATE
    except (OSError, ValueError, asyncio.IncompleteReadError):
        return Probe.FAILED
    return Probe.PASSED if passed else Probe.FAILED


async def _probe(host: str, port: int, path: str) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: tako-health\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        line = await reader.readline()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            return False
        return int(parts[1]) < 500
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
