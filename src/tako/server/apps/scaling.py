"""Idle scale-down: instances above an app's minimum stop after `idle_timeout` seconds without requests,
never while a request or a WebSocket is in flight. (Scale-up from zero is `ManagedApp.wait_upstream`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from tako.server.apps.app import ManagedApp
from tako.server.apps.instance import InstanceState


def idle_surplus(app: ManagedApp, now: float) -> int:
    """How many instances may be stopped now (0 if the app is busy, recently used or at its minimum)."""
    if app.idle_timeout <= 0 or app.stopped or app.operation.locked():
        return 0
    if app.activity.inflight > 0 or now - app.activity.last < app.idle_timeout:
        return 0
    serving = [i for i in app.instances if i.state is InstanceState.HEALTHY]
    return max(0, len(serving) - app.min_instances)


async def reap_idle(app: ManagedApp, now: float) -> None:
    surplus = idle_surplus(app, now)
    if not surplus:
        return
    idle = [i for i in app.instances if i.state is InstanceState.HEALTHY and i.inflight == 0][:surplus]
    if not idle:
        return
    async with app.operation:
        app.log_file.event(f"idle for {app.idle_timeout} s: stopping {len(idle)} instance(s)")
        await asyncio.gather(*(app.retire(i) for i in idle if i.inflight == 0))


async def idle_loop(apps: Callable[[], Iterable[ManagedApp]], interval: float = 0.5) -> None:
    """Runs for the daemon's lifetime; each app's scale-down runs in its own task so drains overlap."""
    tasks: set[asyncio.Task[None]] = set()
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        for app in list(apps()):
            if idle_surplus(app, now):
                task = asyncio.create_task(reap_idle(app, now), name=f"idle-{app.name}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
