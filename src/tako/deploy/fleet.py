"""The fleet runner: every server of the env through the step table, with the strategy of `[deploy]`.

Without a release command, atomicity or rolling batches, each server runs all its steps independently (a
failure on one never stops the others). Otherwise every server prepares first; then the release command
runs once, on the first server (in tako.toml order) that prepared; then servers switch all at once or
`batch` at a time. A server that does not switch has its staged release removed and its lock released,
so it keeps serving the previous release.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

from tako.deploy.interrupts import interrupts
from tako.deploy.plan import DeployPlan, DeployTarget
from tako.deploy.report import DeployReport, Outcome, Progress
from tako.deploy.server_deploy import INTERRUPTED, ServerDeploy, show
from tako.deploy.steps import CURRENT, DEPLOY, PREPARE, RELEASE, SWITCH
from tako.errors import TakoError
from tako.protocol import ERROR_UNKNOWN_APP, Delete, Deploy, Status
from tako.remote.fanout import each_server


async def deploy_all(
    plan: DeployPlan,
    targets: list[DeployTarget],
    progress: Progress,
    *,
    on_interrupt: Callable[[], None] = lambda: None,
) -> list[Outcome]:
    """Deploy to every server; one outcome each, in the order of `targets`.

    The first SIGINT, SIGTERM or SIGHUP stops the servers whose deploy has not yet asked tako-server to
    switch (their steps not yet started are skipped, what they made is removed, their locks released) and
    lets the others finish; a second one exits at once.
    """
    deploys = [ServerDeploy(plan, target, progress) for target in targets]
    try:
        with interrupts(deploys, on_interrupt):
            await _run(plan, deploys)
        _report(deploys)  # those held back or switched back without a report of their own
    finally:
        await asyncio.gather(*(d.close() for d in deploys))
    return [d.outcome() for d in deploys]


async def _run(plan: DeployPlan, deploys: list[ServerDeploy]) -> None:
    fleet = plan.fleet
    if not plan.release_command and not fleet.atomic and fleet.strategy == "parallel":
        await _each(deploys, lambda d: d.run_steps((*PREPARE, *SWITCH)))
        return
    await _each(deploys, _prepare, report=False)
    ready = [d for d in deploys if d.ok]
    if fleet.atomic:
        await _each(ready, _remember_live, report=False)
        if any(not d.ok for d in deploys):
            failed = ", ".join(f"{d.name} failed at {d.failure.step}" for d in deploys if d.failure)
            why = f"not switched: an atomic deploy switches only if every server prepared ({failed})"
            await _hold_back([d for d in ready if d.ok], why)
            return
    if ready and not await ready[0].run_steps((RELEASE,)):
        await _hold_back(ready[1:], f"not switched: the release command failed on {ready[0].name}", "release")
        return
    await _switch(plan, ready)


async def _prepare(d: ServerDeploy) -> None:
    if await d.run_steps(PREPARE):
        show(d.progress.step, d.name, "ready", "prepared; waiting for the other servers to switch")


async def _switch(plan: DeployPlan, ready: list[ServerDeploy]) -> None:
    """Switch the prepared servers batch by batch; the first failed batch stops the rest (and, for an
    atomic deploy, switches back the servers that did switch)."""
    atomic = plan.fleet.atomic
    size = plan.fleet.batch if plan.fleet.strategy == "rolling" else len(ready)
    batches = [ready[i : i + size] for i in range(0, len(ready), size)] or [[]]
    for number, batch in enumerate(batches, start=1):
        await _each(batch, lambda d: d.run_steps((DEPLOY,) if atomic else SWITCH), report=not atomic)
        failed = [d.name for d in batch if not d.ok]
        if not failed:
            continue
        rest = [d for later in batches[number:] for d in later]
        which = f"batch {number} of {len(batches)}" if len(batches) > 1 else "the switch"
        await _hold_back(rest, f"not switched: {which} failed on {', '.join(failed)}")
        if atomic:
            switched = [d for d in ready if d.ok]
            await _each(switched, functools.partial(_switch_back, failed=failed))
        return
    if atomic:
        await _each(ready, lambda d: d.run_steps((CURRENT,)))


async def _remember_live(d: ServerDeploy) -> bool:
    """What tako-server runs before the switch, to switch back to if another server fails to switch."""
    reply = await d.ex.control(Status(app=d.plan.app))
    if reply.ok and isinstance(reply.data, dict):
        d.previous = reply.data
    elif reply.extra.get("code") != ERROR_UNKNOWN_APP:
        await d.fail(f"cannot ask tako-server what it runs before switching: {reply.message}", step="deploy")
    return d.ok


async def _switch_back(d: ServerDeploy, *, failed: list[str]) -> None:
    """Ask tako-server to run the release it ran before (or forget the app, if it is new); then remove the
    new release and the lock."""
    previous = d.previous
    why = f"{', '.join(failed)} failed to switch, so this atomic deploy was undone"
    try:
        if previous is None:
            reply = await d.ex.control(Delete(app=d.plan.app))
            back = "the app, new here, was removed again"
        else:
            reply = await d.ex.control(_previous_release(d, previous))
            back = f"switched back to {previous.get('version')}"
    except TakoError as exc:
        await d.fail(f"{why}; switching back failed: {exc.message}", _CHECK_STATUS, step="deploy")
        return
    if not reply.ok:
        await d.fail(f"{why}; switching back failed: {reply.message}", _CHECK_STATUS, step="deploy")
        return
    await d.fail(f"{why}: {back}", step="deploy")


_CHECK_STATUS = "`tako status` shows what each server runs; deploy again once the failed server is fixed"


def _previous_release(d: ServerDeploy, previous: dict[str, object]) -> Deploy:
    routes = previous.get("routes")
    instances = previous.get("min_instances")
    idle = previous.get("idle_timeout")
    return Deploy(
        app=d.plan.app,
        version=str(previous.get("version")),
        path=str(previous.get("path")),
        routes=tuple(str(r) for r in routes) if isinstance(routes, list) else d.plan.routes,
        instances=instances if isinstance(instances, int) else d.target.instances,
        idle_timeout=idle if isinstance(idle, int) else d.target.idle_timeout,
    )


async def _hold_back(deploys: Sequence[ServerDeploy], why: str, step: str = "deploy") -> None:
    """These servers do not switch: their staged releases and locks are removed. After an interrupt that
    is the reason they give, whatever else failed."""
    await _each(deploys, lambda d: d.fail(INTERRUPTED if d.interrupted else why, step=step))


async def _each(
    deploys: Sequence[ServerDeploy], fn: Callable[[ServerDeploy], Awaitable[object]], *, report: bool = True
) -> None:
    """`fn` on each server at once; with `report`, each server's outcome is shown once it is settled."""
    by_name = {d.name: d for d in deploys}

    async def one(d: ServerDeploy) -> None:
        await fn(d)
        if report or not d.ok:
            _report([d])

    await each_server([d.target.address for d in deploys], lambda address: one(by_name[address.name]))


def _report(deploys: Sequence[ServerDeploy]) -> None:
    for d in deploys:
        if not d.reported:
            d.reported = True
            show(d.progress.finished, d.outcome())


def build_report(plan: DeployPlan, outcomes: list[Outcome]) -> DeployReport:
    urls = tuple(f"https://{route.rstrip('*').rstrip('/') or route}" for route in plan.routes)
    return DeployReport(plan.app, plan.version, plan.env, urls, tuple(outcomes))
