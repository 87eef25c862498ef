"""`tako rollback`: switch every server of an env back to a release it still keeps, as it was deployed
(its code, its own `.env`, its routes and instance counts), with no upload and no rebuild.

A rollback is a run of the deploy's step table (`ROLLBACK`: connect, lock, kept, deploy, unlock) by the
same runner, so progress, failure reports, the cleanup and the interrupt rules are a deploy's: an
interrupt before tako-server is asked changes nothing and releases the lock; after, the server finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from tako.deploy import commands
from tako.deploy.fleet import each, run_fleet
from tako.deploy.layout import TAKO_ROOT
from tako.deploy.lock import lock_holder
from tako.deploy.plan import DeployPlan, DeployTarget
from tako.deploy.releases import ServerReleases, linked_release, lock_and_list, parse_listing, with_live
from tako.deploy.report import Outcome, Progress
from tako.deploy.server_deploy import ServerDeploy, Step
from tako.deploy.steps import CONNECT, DEPLOY, take_lock
from tako.errors import DeployError
from tako.protocol import Status
from tako.remote.connection import ServerAddress


def choose_version(app: str, found: ServerReleases, wanted: str | None) -> str:
    """The release to switch to: `wanted`, or the one deployed before the live one; a DeployError saying
    what the server has when it cannot be done."""
    if found.live is None:
        raise DeployError(f"{app} is not running on this server", hint="deploy it with `tako deploy`")
    kept = ", ".join(found.versions()) or "none"
    if wanted is None:
        previous = found.previous()
        if previous is None:
            others = [v for v in found.versions() if v != found.live]
            raise DeployError(
                f"no release before the live one ({found.live}) is kept here (releases: {kept})",
                hint=f"to switch to a newer one, name it: `tako rollback {others[0]}`"
                if others
                else "deploy a new release with `tako deploy`",
            )
        return previous
    if wanted not in found.versions():
        raise DeployError(
            f"this server does not have release {wanted} (it keeps: {kept})",
            hint="pick one of those; `tako releases` lists what every server keeps",
        )
    return wanted


async def _lock(d: ServerDeploy) -> None:
    """The lock and the listing in one round trip, with tako-server asked what is live at the same time
    (the old order, lock then listing and status, took one round trip more)."""
    listing, status = await asyncio.gather(
        take_lock(d, lock_and_list(d.layout, d.holder)),
        d.ex.control(Status(app=d.plan.app)),
        return_exceptions=True,
    )
    if isinstance(listing, BaseException):
        raise listing
    if isinstance(status, BaseException):
        raise status
    found = with_live(parse_listing(listing), status)
    linked = linked_release(listing)
    if linked is not None and found.live not in (None, linked):
        # A deploy switched between tako-server's answer and the lock (its `current` moved): ask again,
        # now that no deploy can switch.
        found = with_live(list(found.releases), await d.ex.control(Status(app=d.plan.app)))
    d.kept = found


async def _kept(d: ServerDeploy) -> None:
    found = d.kept
    assert found is not None, "the lock step lists the releases"
    version = choose_version(d.plan.app, found, d.plan.version or None)
    d.version, d.live, d.release = version, found.live, d.layout.release(version)
    d.maintenance_allow = None  # who passes maintenance is the app's now, not the release's
    entry = found.entry(version)
    if entry is not None and entry.settings is not None:
        settings = entry.settings
        d.routes, d.instances, d.idle_timeout = settings.routes, settings.instances, settings.idle_timeout
    else:  # a release deployed before Tako recorded its settings: those the app has now
        d.routes, d.instances, d.idle_timeout = found.routes, found.instances, found.idle_timeout
    d.done = (
        f"{version} is already live"
        if version == found.live
        else f"rolled back from {found.live} to {version}"
    )


async def _unlock(d: ServerDeploy) -> None:
    await d.ex.run(commands.release_lock(d.layout, d.holder), what="unlock")
    d.locked = False


def rollback_plan(app: str, wanted: str | None, known_hosts: Path, root: str = TAKO_ROOT) -> DeployPlan:
    """A rollback's plan: nothing to upload; its version is the one asked for ("" for the previous one,
    which each server's **kept** step resolves)."""
    return DeployPlan(
        app=app,
        version=wanted or "",
        env="",
        routes=(),
        archive=Path(),
        archive_size=0,
        env_file=b"",
        known_hosts=known_hosts,
        root=root,
    )


LOCK = Step(
    "lock",
    "taking the deploy lock, listing releases",
    "takes the app's deploy lock (as a deploy does) and lists the kept releases in the same round trip, "
    "while tako-server is asked which one is live",
    "releases the lock",
    _lock,
)
KEPT = Step(
    "kept",
    "choosing the kept release",
    "picks the release to switch to (the one named, or the one deployed before the live one) and the "
    "routes and instance counts it was deployed with",
    "",
    _kept,
)
SWITCH_BACK = Step(
    "deploy",
    "switching from {live} to {version} (rolling update)",
    "asks tako-server to run the kept release; it answers once its instances are healthy",
    "",
    DEPLOY.run,
    applies=lambda d: d.version != d.live,
)
UNLOCK = Step(
    "unlock", "releasing the lock", "releases the lock (tako-server has pointed `current`)", "", _unlock
)

ROLLBACK: tuple[Step, ...] = (CONNECT, LOCK, KEPT, SWITCH_BACK, UNLOCK)


async def rollback_all(
    app: str,
    servers: Sequence[ServerAddress],
    wanted: str | None,
    known_hosts: Path,
    progress: Progress,
    *,
    on_interrupt: Callable[[], None] = lambda: None,
    root: str = TAKO_ROOT,
) -> list[Outcome]:
    """Every server's rollback at once, under a deploy's interrupt rules (tako.deploy.interrupts)."""
    plan = rollback_plan(app, wanted, known_hosts, root)
    holder = lock_holder(wanted or "the previous release", "rolling back to")
    rollbacks = [ServerDeploy(plan, DeployTarget(a, 0, 0), progress, holder) for a in servers]
    return await run_fleet(rollbacks, each(rollbacks, lambda d: d.run_steps(ROLLBACK)), on_interrupt)
