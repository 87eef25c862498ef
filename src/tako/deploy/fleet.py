"""The fleet runner: every server of the env through the step table, with the strategy of `[deploy]`.

Without a release command, atomicity or rolling batches, each server runs all its steps independently (a
failure on one never stops the others). Otherwise every server prepares first; then the release command
runs once, on the first server (in tako.toml order) that prepared; then servers switch all at once or
`batch` at a time. A server that does not switch has its staged release removed and its lock released,
so it keeps serving the previous release.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence

from tako.deploy import commands
from tako.deploy.interrupts import interrupts
from tako.deploy.plan import DeployPlan, DeployTarget
from tako.deploy.report import DeployReport, Outcome, Progress
from tako.deploy.server_deploy import INTERRUPTED, ServerDeploy, show
from tako.deploy.steps import CURRENT, DEPLOY, PREPARE, RELEASE, SWITCH
from tako.errors import ServerError, TakoError
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
    return await run_fleet(deploys, _run(plan, deploys), on_interrupt)


async def run_fleet(
    servers: list[ServerDeploy], run: Awaitable[object], on_interrupt: Callable[[], None]
) -> list[Outcome]:
    """Await `run` (which takes `servers` through their steps) under the interrupt rules; one outcome per
    server, each reported once, in order. Connections are closed whatever happens."""
    try:
        with interrupts(servers, on_interrupt):
            await run
        _report(servers)  # those held back or switched back without a report of their own
    finally:
        await asyncio.gather(*(d.close() for d in servers))
    return [d.outcome() for d in servers]


async def _run(plan: DeployPlan, deploys: list[ServerDeploy]) -> None:
    fleet = plan.fleet
    if not plan.release_command and not fleet.atomic and fleet.strategy == "parallel":
        await each(deploys, lambda d: d.run_steps((*PREPARE, *SWITCH)))
        return
    await each(deploys, _prepare, report=False)
    ready = [d for d in deploys if d.ok]
    if fleet.atomic:
        await each(ready, _remember_live, report=False)
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
        await each(batch, lambda d: d.run_steps((DEPLOY,) if atomic else SWITCH), report=not atomic)
        failed = [d.name for d in batch if not d.ok]
        if not failed:
            continue
        rest = [d for later in batches[number:] for d in later]
        which = f"batch {number} of {len(batches)}" if len(batches) > 1 else "the switch"
        await _hold_back(rest, f"not switched: {which} failed on {', '.join(failed)}")
        if atomic:
            switched = [d for d in ready if d.ok]
            await each(switched, functools.partial(_switch_back, failed=failed))
        return
    if atomic:
        await each(ready, lambda d: d.run_steps((CURRENT,)))


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
    new release and the lock. When that fails, the new release keeps serving there: it is kept, and the
    outcome says where the server is left and what to do."""
    why = f"{', '.join(failed)} failed to switch"
    try:
        back = await _run_previous(d)
    except ServerError as exc:  # tako-server answered: the new release keeps serving
        await _left_on_new(d, f"{why}, and {exc.message}", failed, maybe=False)
    except TakoError as exc:  # no answer: it may or may not have switched back
        await _left_on_new(
            d, f"{why}, and switching this server back failed: {exc.message}", failed, maybe=True
        )
    else:
        await d.fail(f"{why}, so this atomic deploy was undone: {back}", step="deploy")


async def _run_previous(d: ServerDeploy) -> str:
    """Run what ran before this deploy again; what was done. A ServerError when tako-server refused."""
    previous = d.previous
    if previous is None:
        reply = await d.ex.control(Delete(app=d.plan.app))
        back, refused = "the app, new here, was removed again", "removing the app (new here) failed"
    else:
        request = _previous_release(d, previous)
        if request.path == d.release:
            # A redeploy of the live version: its directory now holds this deploy's files (the ones it
            # replaced wait aside); put those back before tako-server reads the release again.
            restore = commands.restore_replaced(d.staging, d.release, d.replaced)
            await d.ex.run(restore, what="put back the replaced release")
        reply = await d.ex.control(request)
        back = f"switched back to {request.version}"
        refused = f"switching this server back to {request.version} failed"
    if not reply.ok:
        raise ServerError(f"{refused}: {reply.message}")
    return back


async def _left_on_new(d: ServerDeploy, why: str, failed: list[str], *, maybe: bool) -> None:
    """Switching back failed, so this deploy's release (probably) serves here: keep its files in place as
    `releases/<version>`, so the cleanup only releases the lock."""
    with contextlib.suppress(TakoError):
        keep = commands.keep_deployed(d.staging, d.release, d.replaced)
        await d.ex.run(keep, check=False, timeout=30, what="keep the deployed release")
    d.staged = False
    left = f"this server {'may be' if maybe else 'is'} left on {d.plan.version}"
    hint = (
        f"fix {', '.join(failed)}, then run `tako deploy` again to bring every server to one version; "
        f"{_CHECK_STATUS}"
    )
    await d.fail(f"{why}: {left}", hint, step="deploy")


_CHECK_STATUS = "`tako status` shows what each server runs"


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
    await each(deploys, lambda d: d.fail(INTERRUPTED if d.interrupted else why, step=step))


async def each(
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
