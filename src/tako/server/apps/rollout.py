"""Rolling updates (deploy and reload): start new → healthy → into rotation → drain old → stop old.

On any failure the new instances are stopped, old ones that were already retired are started again from
the old release, and the app keeps its old release; the error names the failing instance and its output.
"""

from __future__ import annotations

import asyncio
import logging

from tako.errors import InstanceFailed
from tako.server.apps.app import AppState, ManagedApp
from tako.server.apps.instance import Instance, InstanceState
from tako.server.apps.release import Release

log = logging.getLogger("tako.server.apps")

# Consecutive successful probes a new instance needs during a deploy (catches "answers once, then dies").
DEPLOY_CONFIRM = 2


async def rollout(app: ManagedApp, new: Release, count: int) -> None:
    """Replace the app's serving instances by `count` instances of `new` (caller holds `app.operation`).

    `count` = 0 (on-demand app with nothing running) still boots one instance to prove the release
    starts and answers its health check, then stops it.
    """
    old_release = app.release
    old = [i for i in app.instances if i.state is not InstanceState.FAILED]
    started: list[Instance] = []
    retired = 0
    timeout = app.settings.healthy_timeout
    app.set_state(AppState.DEPLOYING)
    app.log_file.event(f"rolling update to {new.version}: {max(count, 1)} new instance(s), {len(old)} old")
    try:
        if count == 0 and not old:
            probe = await app.start_instance(new, confirm=DEPLOY_CONFIRM, timeout=timeout, serve=False)
            await probe.stop(app.settings.stop_grace)
            app.release = new
            return
        for _ in range(max(count, 1)):
            inst = await app.start_instance(new, confirm=DEPLOY_CONFIRM, timeout=timeout)
            started.append(inst)
            _check_alive(started)
            if old:
                await app.retire(old.pop(0))
                retired += 1
                _check_alive(started)
        app.release = new
        # Surplus old instances (scaling down, or woken on-demand ones) leave together.
        await asyncio.gather(*(app.retire(i) for i in old))
        app.log_file.event(f"rolling update to {new.version} done")
    except BaseException as exc:
        await _restore(app, old_release, started, retired)
        if isinstance(exc, InstanceFailed):
            app.last_error = exc.message
            app.log_file.event(f"rolling update to {new.version} failed; {old_release.version} keeps serving")
        raise
    finally:
        app.set_state(AppState.STARTING)
        app.refresh()


def _check_alive(started: list[Instance]) -> None:
    for inst in started:
        if inst.state is InstanceState.FAILED:
            raise InstanceFailed(inst.failure or inst.failure_message("failed during the rolling update"))


async def _restore(app: ManagedApp, old_release: Release, started: list[Instance], retired: int) -> None:
    """Bring back as many old instances as were retired, then drain and stop the new ones."""
    app.release = old_release
    for _ in range(0 if app.closing else retired):
        try:
            await app.start_instance(old_release, confirm=1, timeout=app.settings.healthy_timeout)
        except InstanceFailed as exc:
            log.warning("could not restore an instance of %s %s: %s", app.name, old_release.version, exc)
            break
    await asyncio.gather(*(app.retire(i) for i in started), return_exceptions=True)
