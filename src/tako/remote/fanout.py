"""Run one coroutine per server at once; collect per-server results, never letting one failure cancel
the others (partial success is data)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from tako.errors import TakoError
from tako.remote.connection import ServerAddress, connect
from tako.remote.executor import Executor

T = TypeVar("T")


@dataclass(frozen=True)
class HostResult(Generic[T]):
    server: ServerAddress
    value: T | None = None
    error: TakoError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def with_executor(
    address: ServerAddress, known_hosts: Path, fn: Callable[[Executor], Awaitable[T]]
) -> T:
    executor = Executor(await connect(address, known_hosts), address)
    try:
        return await fn(executor)
    finally:
        await executor.close()


async def each_server(
    servers: Sequence[ServerAddress], fn: Callable[[ServerAddress], Awaitable[T]]
) -> list[HostResult[T]]:
    """`fn` for every server in parallel, results in the order of `servers`; a TakoError (or any other
    exception) of one becomes that server's result."""

    async def one(address: ServerAddress) -> HostResult[T]:
        try:
            return HostResult(address, value=await fn(address))
        except TakoError as exc:
            return HostResult(address, error=exc)
        except Exception as exc:  # keep the other servers going; report this one
            return HostResult(address, error=TakoError(f"{address.name}: unexpected error: {exc!r}"))

    return list(await asyncio.gather(*(one(s) for s in servers)))


async def fan_out(
    servers: Sequence[ServerAddress],
    known_hosts: Path,
    fn: Callable[[Executor], Awaitable[T]],
) -> list[HostResult[T]]:
    """`fn` on every server in parallel, each on its own connection."""
    return await each_server(servers, lambda address: with_executor(address, known_hosts, fn))
