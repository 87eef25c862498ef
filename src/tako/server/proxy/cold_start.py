"""Cold-start admission, one policy for every `AppGate` (the app runtime's in the main process and the
gates of data-plane workers): a request that finds no instance waits for one to start, at most
`cold_start_queue` such requests per app and process, each at most `cold_start_timeout` seconds; past
either bound it is answered 503 "App is starting" with `Retry-After: 1`. How an instance gets started
differs (the runtime starts one, a worker asks the main process): that is the gate's `await_cold_start`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeVar

from tako.server.proxy.backend import AppUnavailable

U = TypeVar("U")
U_co = TypeVar("U_co", covariant=True)


class ColdStartable(Protocol[U_co]):
    """What the queue asks of a gate."""

    @property
    def name(self) -> str: ...

    def pick(self) -> U_co | None:
        """An instance in rotation, or None."""

    def is_stopped(self) -> bool:
        """Stopped or going away: nothing is started, requests are answered at once."""

    async def await_cold_start(self, remaining: float) -> None:
        """Have an instance started (once, however many requests wait) and wait at most `remaining`
        seconds for news of it; raise AppUnavailable if the start failed."""


def app_stopped(name: str) -> AppUnavailable:
    return AppUnavailable(f"App {name} is stopped", retry_after=None)


def still_starting() -> AppUnavailable:
    return AppUnavailable("App is starting", retry_after=1)


class ColdStartQueue:
    """The requests of one app waiting for a cold start in this process."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters = 0

    async def wait(self, gate: ColdStartable[U], limit: int, timeout: float) -> U:
        """An instance for one request: at once if one is in rotation, else after a cold start."""
        up = gate.pick()
        if up is not None:
            return up
        if gate.is_stopped():
            raise app_stopped(gate.name)
        if self.waiters >= limit:
            raise still_starting()
        self.waiters += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise still_starting()
                await gate.await_cold_start(remaining)
                up = gate.pick()
                if up is not None:
                    return up
                if gate.is_stopped():
                    raise app_stopped(gate.name)
        finally:
            self.waiters -= 1
