"""Ctrl-C (SIGINT), SIGTERM and SIGHUP while a command changes servers (deploy, rollback).

The first signal stops every server that has not yet asked tako-server to switch (its steps not yet
started are skipped, its cleanup undoes what it made) and lets the others finish; a second one exits at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interruptible(Protocol):
    """One server's part of a command."""

    @property
    def committed(self) -> bool:
        """tako-server was asked to switch: the server finishes whatever happens here."""
        ...

    @property
    def task(self) -> asyncio.Future[Any] | None:
        """What runs this server's steps, cancelled when `interrupt` says the current step may be cut."""
        ...

    def interrupt(self) -> bool:
        """Stop before the next step; True when the step in progress may be cancelled too."""
        ...


@contextlib.contextmanager
def interrupts(servers: Sequence[Interruptible], on_interrupt: Callable[[], None]) -> Iterator[None]:
    """Within the block, the signals stop `servers` as the module docstring says; `on_interrupt` runs
    once, at the first signal (to tell the user)."""
    interrupted = False

    def interrupt(signum: int) -> None:
        nonlocal interrupted
        if interrupted:
            os._exit(128 + signum)  # the second interrupt: the user wants out now, whatever is left
        interrupted = True
        on_interrupt()
        for server in servers:
            task = server.task
            if not server.committed and server.interrupt() and task is not None and not task.done():
                task.cancel()

    loop = asyncio.get_running_loop()
    installed = []
    for signum in INTERRUPT_SIGNALS:
        try:
            loop.add_signal_handler(signum, interrupt, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests calling this directly): no handler
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
