"""The steps of a server's deploy as a table: each a name (what progress shows and a failure names), what it
does, and what the cleanup undoes when the deploy fails after it.

`PREPARE` ends with the release staged (unpacked, dependencies installed, `.env` written) and the lock
held; `SWITCH` asks tako-server to run it, then points `current` at it, prunes and unlocks. The fleet runner
(`deploy.fleet`) runs the release command and applies the strategy between the two.
"""

from __future__ import annotations

import asyncio

from tako.deploy import commands
from tako.deploy.lock import stale_own_lock
from tako.deploy.plan import size_text
from tako.deploy.releases import ReleaseSettings
from tako.deploy.server_deploy import ServerDeploy, Step, show
from tako.errors import DeployError, RemoteError, ServerError, TakoError
from tako.protocol import Deploy, Routes, Status
from tako.remote.connection import connect
from tako.remote.executor import Command, Executor
from tako.remote.fanout import with_executor
from tako.routing import find_conflicts

RECONNECT_TIMEOUT = 10.0  # asking a server what it runs after the control connection was lost
RELEASE_KILL_GRACE = 10  # seconds the release command gets after SIGTERM at its timeout, before SIGKILL
TIMED_OUT = 124  # the exit status of `timeout` when it stopped the command


async def _connect(d: ServerDeploy) -> None:
    d.executor = Executor(await connect(d.target.address, d.plan.known_hosts), d.target.address)


async def _lock(d: ServerDeploy) -> None:
    await take_lock(d, commands.acquire_lock(d.layout, d.holder))


async def take_lock(d: ServerDeploy, acquire: Command) -> str:
    """Run `acquire` (a script starting with `commands.TAKE_LOCK`), breaking a stale lock of ours once;
    its output once the lock is held."""
    ex, layout = d.ex, d.layout
    result = await ex.run(acquire, check=False, what="lock")
    stale = result.stdout.strip()
    if result.exit_status == commands.LOCK_HELD_STATUS and stale_own_lock(stale):
        d.say("lock", f"removing a stale lock of an interrupted deploy ({stale})")
        await ex.run(commands.break_lock(layout, stale), check=False, what="break stale lock")
        result = await ex.run(acquire, check=False, what="lock")
    if result.exit_status == commands.LOCK_HELD_STATUS:
        holder = result.stdout.strip() or "unknown holder"
        raise DeployError(
            f"another deploy holds the lock {layout.lock} ({holder})",
            hint=f"wait for it to finish; if it was interrupted, remove the lock with "
            f"`ssh {d.target.address.ssh_destination} rm -rf {layout.lock}`",
        )
    if not result.ok:
        raise DeployError(f"cannot create {layout.lock}: {result.stderr.strip()}")
    d.locked = True
    return result.stdout


async def _disk(d: ServerDeploy) -> None:
    plan = d.plan
    checked = await d.ex.run(commands.preflight(plan.root), what="preflight")
    available, installed = commands.parse_preflight(checked.stdout)
    d.server_installed = installed
    if available < plan.required_disk:
        raise DeployError(
            f"not enough disk space under {plan.root}: {size_text(plan.required_disk)} required "
            f"({plan.describe_required_disk()}), {size_text(available)} available",
            hint=f"free some space on the server (old releases live in {plan.root}/apps/*/releases)",
        )


async def _server(d: ServerDeploy) -> None:
    if not d.server_installed:
        raise DeployError(
            "tako-server is not installed",
            hint="install it as root on the server: scripts/install-server (see docs/operations.md)",
        )
    try:
        await d.ex.hello()
    except (ServerError, RemoteError) as exc:
        raise DeployError(
            "tako-server is installed but not running (its control socket does not answer)",
            hint="start it on the server: `tako-server-service start` (or `systemctl start "
            "tako-server` where systemd runs it); `tako servers status NAME` shows its state",
        ) from exc


async def _routes(d: ServerDeploy) -> None:
    plan = d.plan
    reply = await d.ex.control(Routes())
    if not reply.ok:
        raise DeployError(f"tako-server refused `routes`: {reply.message}")
    existing = {str(app): [str(r) for r in routes] for app, routes in (reply.data or {}).items()}
    conflicts = find_conflicts(plan.app, plan.routes, existing)
    if conflicts:
        c = conflicts[0]
        raise DeployError(
            f"route {c.route!r} of app {plan.app!r} conflicts with route {c.other_route!r} of app "
            f"{c.other_app!r} on this server",
            hint="give each app its own host or path, or remove the other app with `tako delete`",
        )


async def _dirs(d: ServerDeploy) -> None:
    d.staged = True  # before the command: an interrupt may land after the server made the dirs
    await d.ex.run(commands.prepare_dirs(d.layout, d.staging), what="mkdir")


async def _upload(d: ServerDeploy) -> None:
    await d.ex.upload(
        d.plan.archive,
        d.upload_path,
        progress=lambda sent, total: show(d.progress.transfer, d.name, sent, total),
    )


async def _extract(d: ServerDeploy) -> None:
    await d.ex.run(commands.extract(d.upload_path, d.staging), what="extract")


async def _python(d: ServerDeploy) -> None:
    for install in d.plan.installers:
        await install(d.ex, d.staging, d.say)


async def _env(d: ServerDeploy) -> None:
    settings = ReleaseSettings(d.routes, d.instances, d.idle_timeout)  # what a rollback to it restores
    await d.ex.run(
        commands.finish_staging(d.layout, d.staging, d.release, d.replaced, settings.as_json()),
        input=d.plan.env_file,
        what="write .env and promote the release",
    )


async def _release(d: ServerDeploy) -> None:
    """The release command, as the app in the staged release with its environment (tako-server's
    `run-as-app` sets that up); `timeout` stops it (and, through run-as-app, the command's process group)."""
    plan = d.plan
    argv = (
        *("timeout", "-k", str(RELEASE_KILL_GRACE), str(plan.release_timeout)),
        *("tako-server", "run-as-app", "--release", d.release, plan.app, "--"),
        *("/bin/sh", "-c", plan.release_command),
    )
    status = await d.ex.stream(
        Command(argv),
        lambda line: show(d.progress.output, d.name, line),
        timeout=plan.release_timeout + 2 * RELEASE_KILL_GRACE,
        what="the release command",
    )
    if status == TIMED_OUT:
        raise DeployError(
            f"the release command `{plan.release_command}` did not finish within {plan.release_timeout} s "
            "and was stopped",
            hint="make it faster, or raise [tako] release_timeout in tako.toml",
        )
    if status != 0:
        raise DeployError(
            f"the release command `{plan.release_command}` exited with status {status}",
            hint="its output is above, prefixed with the server's name; fix it and deploy again",
        )


async def _deploy(d: ServerDeploy) -> None:
    d.committed = True
    request = Deploy(
        app=d.plan.app,
        version=d.version,
        path=d.release,
        routes=d.routes,
        instances=d.instances,
        idle_timeout=d.idle_timeout,
        maintenance_allow=d.maintenance_allow,
    )
    try:
        reply = await d.ex.control(request)
    except RemoteError as exc:
        # The server may be starting this release, or have switched to it already: never remove it.
        d.staged = False
        raise DeployError(
            f"{exc.message}; {await _rollout_outcome(d)}",
            hint="run `tako status` to see what each server runs; the next `tako deploy` removes "
            "the lock this one left",
        ) from exc
    if not reply.ok:
        raise DeployError(f"tako-server refused the release: {reply.message}")


async def _rollout_outcome(d: ServerDeploy) -> str:
    """After the control connection was lost mid-rollout: ask again, on a new connection, what runs."""
    plan, wanted = d.plan, d.version
    try:
        live = await asyncio.wait_for(
            with_executor(d.target.address, plan.known_hosts, lambda ex: ex.control(Status(app=plan.app))),
            RECONNECT_TIMEOUT,
        )
    except (TakoError, TimeoutError):
        return "the server cannot be reached to ask whether it finished the rollout"
    version = live.data.get("version") if live.ok and isinstance(live.data, dict) else None
    if version == wanted:
        return f"tako-server finished the rollout: {wanted} is live"
    if version is None:
        return f"tako-server did not finish the rollout: {plan.app} is not running there"
    return f"tako-server did not finish the rollout: {version} keeps serving"


async def _current(d: ServerDeploy) -> None:
    plan = d.plan
    d.staged = False  # from here on the release is live: never removed by cleanup
    unlock = not plan.after_prune
    await d.ex.run(
        commands.finalize(d.layout, plan.version, d.nonce, d.holder, plan.keep_releases, unlock=unlock),
        what="switch current",
    )
    if plan.after_prune:  # e.g. venvs no kept release uses; still under the lock
        for command in plan.after_prune:
            await d.ex.run(command, check=False, what="prune")
        await d.ex.run(commands.release_lock(d.layout, d.holder), what="unlock")
    d.locked = False
    d.done = f"{plan.app} {plan.version} is live"


CONNECT = Step("connect", "connecting to {host}", "opens the SSH connection", "", _connect)
LOCK = Step(
    "lock",
    "taking the deploy lock",
    "takes the app's deploy lock (breaking a stale one of an interrupted deploy of yours)",
    "releases the lock",
    _lock,
)
DISK = Step(
    "disk",
    "checking free disk space",
    "checks the free space for the upload, the unpacked release and its dependencies",
    "",
    _disk,
)
SERVER = Step("server", "checking tako-server", "checks tako-server is installed and answers", "", _server)
ROUTES = Step(
    "routes", "checking route conflicts", "checks no other app there has a conflicting route", "", _routes
)
DIRS = Step(
    "dirs",
    "creating release directories",
    "creates the staging directory (removing leftovers of interrupted deploys)",
    "removes the staging directory",
    _dirs,
)
UPLOAD = Step(
    "upload", "uploading {size}", "streams the archive, checked by sha256", "removes the upload", _upload
)
EXTRACT = Step(
    "extract",
    "unpacking the release",
    "unpacks it into the staging directory, refusing links out of the release",
    "removes the staging directory",
    _extract,
)
PYTHON = Step(
    "python",
    "",
    "installs the Python dependencies into the release's virtualenv, offline (Python apps only)",
    "removes the staging directory",
    _python,
    applies=lambda d: bool(d.plan.installers),
)
ENV = Step(
    "env",
    "linking shared directories, writing .env",
    "links the shared logs, writes `.env` (0600) and renames the staging dir to `releases/<version>`",
    "removes the release (or puts back the one of the same version it replaced)",
    _env,
)
RELEASE = Step(
    "release",
    "running the release command",
    "runs `[tako] release` once per deploy, on the first server that prepared, in the new release as the "
    "app with its environment",
    "no server switches: every staged release is removed, every lock released",
    _release,
    applies=lambda d: bool(d.plan.release_command),
)
DEPLOY = Step(
    "deploy",
    "starting instances",
    "asks tako-server to run the release; it answers once the new instances are healthy",
    "",
    _deploy,
)
CURRENT = Step(
    "current",
    "switching current, removing old releases, releasing the lock",
    "points `current` at the release, prunes old releases and releases the lock",
    "",
    _current,
)

PREPARE: tuple[Step, ...] = (CONNECT, LOCK, DISK, SERVER, ROUTES, DIRS, UPLOAD, EXTRACT, PYTHON, ENV)
SWITCH: tuple[Step, ...] = (DEPLOY, CURRENT)
