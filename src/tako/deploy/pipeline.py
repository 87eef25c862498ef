"""The per-server deploy pipeline (the steps of docs/deployment.md), and the parallel runner.

Every server runs the same steps independently; a failure on one never stops the others. Each failure
path releases the lock and removes the release directory this deploy created, so the server keeps
serving the previous release and a re-run just works.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import secrets as random_tokens
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from tako.deploy import commands
from tako.deploy.layout import TAKO_ROOT, AppLayout
from tako.deploy.report import DeployReport, Progress, ServerOutcome
from tako.errors import DeployError, RemoteError, ServerError, TakoError
from tako.protocol import Deploy, Routes, Status
from tako.remote.connection import ServerAddress, connect
from tako.remote.executor import Command, Executor
from tako.remote.fanout import with_executor
from tako.routing import find_conflicts

# Reports the step a server's deploy is at: (step name, what it is doing). The name is what a failure names.
StepReporter = Callable[[str, str], None]

DISK_HEADROOM = 64 * 1024 * 1024
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RECONNECT_TIMEOUT = 10.0  # asking a server what it runs after the control connection was lost
VENV_PER_WHEEL_BYTE = 6


@dataclass(frozen=True)
class DeployTarget:
    address: ServerAddress
    instances: int
    idle_timeout: int


@dataclass(frozen=True)
class DeployPlan:
    """Everything built locally, the same for every server of the env."""

    app: str
    version: str
    env: str
    routes: tuple[str, ...]
    archive: Path
    archive_size: int
    env_file: bytes = field(repr=False)  # holds secret values: never printed
    unpacked_size: int = 0  # the release once extracted (ArchiveInfo.unpacked_size)
    wheel_size: int = 0  # Python wheels in it, which the server installs into a venv
    known_hosts: Path = Path()
    root: str = TAKO_ROOT
    # Steps after the extract, each given the executor, the staged release dir and the step reporter (so a
    # failure is reported at the hook's own step, e.g. "python", not at "extract").
    after_extract: tuple[Callable[[Executor, str, StepReporter], Awaitable[None]], ...] = ()
    # Extra cleanup after old releases are pruned (e.g. venvs no release uses any more).
    after_prune: tuple[Command, ...] = ()

    @property
    def required_disk(self) -> int:
        """The upload, the extracted release, a venv for its wheels, and headroom.

        From the unpacked size, not the archive's: an archive can be tiny for a large release (130 MB of
        zeros packs to 125 KiB). Wheels install to about five and a half times their size (measured: the
        wheels of fastapi, uvicorn, flask and gunicorn, 4.4 MB, installed into a venv with bytecode, 23.9 MB).
        """
        return self.archive_size + self.unpacked_size + VENV_PER_WHEEL_BYTE * self.wheel_size + DISK_HEADROOM

    def describe_required_disk(self) -> str:
        parts = [f"the {_size(self.archive_size)} upload", f"{_size(self.unpacked_size)} unpacked"]
        if self.wheel_size:
            parts.append(f"{_size(VENV_PER_WHEEL_BYTE * self.wheel_size)} for its Python dependencies")
        return ", ".join(parts) + f" and {_size(DISK_HEADROOM)} to spare"


class _Interrupted(Exception):
    """Raised at the start of a step once the deploy was interrupted (before tako-server was asked)."""


def _show(show: Callable[..., None], *args: object) -> None:
    """Progress output that cannot fail a deploy: with stdout gone (`tako deploy | head -5`, a closed
    terminal) the deploy goes on, since stopping between steps could leave a server half switched."""
    with contextlib.suppress(OSError):
        show(*args)


def _lock_holder(version: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} deploying {version} since {when}"


def _stale_own_lock(holder: str) -> bool:
    """Whether a lock holder line names a deploy from this machine and user whose process is gone.

    Such a lock was left by an interrupted deploy (its connection was lost before it could clean up),
    so it is safe to break. Anyone else's lock, or one of a live tako process here, is never broken.
    """
    parts = holder.split()
    if len(parts) < 3 or parts[1] != "pid" or not parts[2].isdigit():
        return False
    if parts[0] != f"{getpass.getuser()}@{socket.gethostname()}":
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:  # the deploy that took it is gone: the lock is stale
        return True
    except psutil.Error:  # cannot tell (e.g. access denied): leave it alone
        return False
    return "tako" not in cmdline  # the pid was reused by something else


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class ServerDeploy:
    """One server's pipeline, with the cleanup state it needs on failure."""

    def __init__(self, plan: DeployPlan, target: DeployTarget, progress: Progress) -> None:
        self.plan = plan
        self.target = target
        self.progress = progress
        self.name = target.address.name
        self.layout = AppLayout(plan.app, plan.root)
        self.nonce = random_tokens.token_hex(4)
        self.holder = _lock_holder(plan.version)
        self.staging = self.layout.staging(plan.version, self.nonce)
        self.release = self.layout.release(plan.version)
        self.replaced = self.layout.replaced(plan.version, self.nonce)
        self.upload_path = self.layout.upload(plan.version)
        self.executor: Executor | None = None
        self.locked = False
        self.staged = False
        # tako-server was asked to run the release: from then on an interrupt lets this server finish (the
        # server completes the rollout whatever the CLI does; stopping here would only leave a lock).
        self.committed = False
        self.interrupted = False
        self.step_name = "connect"

    def _step(self, step: str, text: str) -> None:
        if self.interrupted:
            raise _Interrupted  # a step not yet started is skipped
        self.step_name = step
        _show(self.progress.step, self.name, step, text)

    def interrupt(self) -> bool:
        """Stop before the next step; True when the step in progress may be cut short too.

        Only the upload is cut (its remote end stops at end of input). A remote command cut short would go
        on running on the server while the cleanup runs beside it (a `mkdir` or `tar` recreating what the
        cleanup just removed), so the others finish first: they take seconds at most.
        """
        self.interrupted = True
        return self.step_name == "upload"

    async def run(self) -> ServerOutcome:
        try:
            await self._pipeline()
        except TakoError as exc:
            await self._cleanup()
            # Remote errors start with the server's name; the outcome already carries it.
            message = exc.message.removeprefix(f"{self.name}: ")
            return ServerOutcome(self.name, False, self.step_name, message, exc.hint)
        except (asyncio.CancelledError, _Interrupted):
            # Interrupted (Ctrl-C, SIGTERM, a closed terminal) before tako-server was asked: undo what this
            # deploy made, so the server is exactly as before.
            await self._cleanup()
            return ServerOutcome(
                self.name,
                False,
                self.step_name,
                "interrupted before tako-server was asked to switch: nothing changed, the previous release "
                "keeps serving and the lock is released",
            )
        except Exception as exc:  # one server's unexpected failure must not stop the others
            await self._cleanup()
            return ServerOutcome(self.name, False, self.step_name, f"unexpected error: {exc!r}")
        finally:
            if self.executor is not None:
                await self.executor.close()
        return ServerOutcome(self.name, True, "done", f"{self.plan.app} {self.plan.version} is live")

    async def _pipeline(self) -> None:
        plan = self.plan
        address = self.target.address
        self._step("connect", f"connecting to {address.host}")
        self.executor = ex = Executor(await connect(address, plan.known_hosts), address)

        self._step("lock", "taking the deploy lock")
        result = await ex.run(commands.acquire_lock(self.layout, self.holder), check=False, what="lock")
        stale = result.stdout.strip()
        if result.exit_status == commands.LOCK_HELD_STATUS and _stale_own_lock(stale):
            self._step("lock", f"removing a stale lock of an interrupted deploy ({stale})")
            await ex.run(commands.break_lock(self.layout, stale), check=False, what="break stale lock")
            result = await ex.run(commands.acquire_lock(self.layout, self.holder), check=False, what="lock")
        if result.exit_status == commands.LOCK_HELD_STATUS:
            holder = result.stdout.strip() or "unknown holder"
            raise DeployError(
                f"another deploy holds the lock {self.layout.lock} ({holder})",
                hint=f"wait for it to finish; if it was interrupted, remove the lock with "
                f"`ssh {address.ssh_destination} rm -rf {self.layout.lock}`",
            )
        if not result.ok:
            raise DeployError(f"cannot create {self.layout.lock}: {result.stderr.strip()}")
        self.locked = True

        self._step("disk", "checking free disk space")
        checked = await ex.run(commands.preflight(plan.root), what="preflight")
        available, installed = commands.parse_preflight(checked.stdout)
        if available < plan.required_disk:
            raise DeployError(
                f"not enough disk space under {plan.root}: {_size(plan.required_disk)} required "
                f"({plan.describe_required_disk()}), {_size(available)} available",
                hint=f"free some space on the server (old releases live in {plan.root}/apps/*/releases)",
            )

        self._step("server", "checking tako-server")
        if not installed:
            raise DeployError(
                "tako-server is not installed",
                hint="install it as root on the server: scripts/install-server (see docs/operations.md)",
            )
        try:
            await ex.hello()
        except (ServerError, RemoteError) as exc:
            raise DeployError(
                "tako-server is installed but not running (its control socket does not answer)",
                hint="start it on the server: `tako-server-service start` (or `systemctl start "
                "tako-server` where systemd runs it); `tako servers status NAME` shows its state",
            ) from exc

        self._step("routes", "checking route conflicts")
        reply = await ex.control(Routes())
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

        self._step("dirs", "creating release directories")
        self.staged = True  # before the command: an interrupt may land after the server made the dirs
        await ex.run(commands.prepare_dirs(self.layout, self.staging), what="mkdir")

        self._step("upload", f"uploading {_size(plan.archive_size)}")
        upload_path = self.upload_path
        await ex.upload(
            plan.archive,
            upload_path,
            progress=lambda sent, total: _show(self.progress.transfer, self.name, sent, total),
        )

        self._step("extract", "unpacking the release")
        await ex.run(commands.extract(upload_path, self.staging), what="extract")
        for hook in plan.after_extract:
            await hook(ex, self.staging, self._step)

        self._step("env", "linking shared directories, writing .env")
        await ex.run(
            commands.finish_staging(self.layout, self.staging, self.release, self.replaced),
            input=plan.env_file,
            what="write .env and promote the release",
        )

        self._step("deploy", "starting instances")
        self.committed = True
        request = Deploy(
            app=plan.app,
            version=plan.version,
            path=self.release,
            routes=plan.routes,
            instances=self.target.instances,
            idle_timeout=self.target.idle_timeout,
        )
        try:
            reply = await ex.control(request)
        except RemoteError as exc:
            # The server may be starting this release, or have switched to it already: never remove it.
            self.staged = False
            raise DeployError(
                f"{exc.message}; {await self._rollout_outcome()}",
                hint="run `tako status` to see what each server runs; the next `tako deploy` removes "
                "the lock this one left",
            ) from exc
        if not reply.ok:
            raise DeployError(f"tako-server refused the release: {reply.message}")

        self._step("current", "switching current, removing old releases, releasing the lock")
        self.staged = False  # from here on the release is live: never removed by cleanup
        await ex.run(
            commands.finalize(
                self.layout, plan.version, self.nonce, self.holder, unlock=not plan.after_prune
            ),
            what="switch current",
        )
        if plan.after_prune:  # e.g. venvs no kept release uses; still under the lock
            for command in plan.after_prune:
                await ex.run(command, check=False, what="prune")
            await ex.run(commands.release_lock(self.layout, self.holder), what="unlock")
        self.locked = False

    async def _rollout_outcome(self) -> str:
        """After the control connection was lost mid-rollout: ask again, on a new connection, what runs."""
        plan = self.plan
        try:
            live = await asyncio.wait_for(
                with_executor(
                    self.target.address, plan.known_hosts, lambda ex: ex.control(Status(app=plan.app))
                ),
                RECONNECT_TIMEOUT,
            )
        except (TakoError, TimeoutError):
            return "the server cannot be reached to ask whether it finished the rollout"
        version = live.data.get("version") if live.ok and isinstance(live.data, dict) else None
        if version == plan.version:
            return f"tako-server finished the rollout: {plan.version} is live"
        if version is None:
            return f"tako-server did not finish the rollout: {plan.app} is not running there"
        return f"tako-server did not finish the rollout: {version} keeps serving"

    async def _cleanup(self) -> None:
        """Undo what this deploy created, best effort; the connection may be gone."""
        ex = self.executor
        if ex is None:
            return
        try:
            if self.staged:
                await ex.run(
                    commands.rollback(self.staging, self.release, self.replaced), check=False, timeout=30
                )
            if self.locked:
                await ex.run(commands.remove_upload(self.upload_path), check=False, timeout=30)
                await ex.run(commands.release_lock(self.layout, self.holder), check=False, timeout=30)
                await ex.run(commands.remove_app_dir_if_empty(self.layout), check=False, timeout=30)
        except TakoError:
            pass


async def deploy_all(
    plan: DeployPlan,
    targets: list[DeployTarget],
    progress: Progress,
    *,
    on_interrupt: Callable[[], None] = lambda: None,
) -> list[ServerOutcome]:
    """Run every server's pipeline at once; each returns its own outcome.

    The first SIGINT, SIGTERM or SIGHUP stops the servers whose deploy has not yet asked tako-server to
    switch (their steps not yet started are skipped, what they made is removed, their locks released) and
    lets the others finish; a second one exits at once.
    """
    deploys = [ServerDeploy(plan, target, progress) for target in targets]

    async def one(deploy: ServerDeploy) -> ServerOutcome:
        outcome = await deploy.run()
        _show(progress.finished, outcome)
        return outcome

    tasks = [asyncio.ensure_future(one(d)) for d in deploys]
    interrupted = False

    def interrupt(signum: int) -> None:
        nonlocal interrupted
        if interrupted:
            os._exit(128 + signum)  # the second interrupt: the user wants out now, whatever is left
        interrupted = True
        on_interrupt()
        for deploy, task in zip(deploys, tasks, strict=True):
            if not deploy.committed and not task.done() and deploy.interrupt():
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
        return list(await asyncio.gather(*tasks))
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def build_report(plan: DeployPlan, outcomes: list[ServerOutcome]) -> DeployReport:
    urls = tuple(f"https://{route.rstrip('*').rstrip('/') or route}" for route in plan.routes)
    return DeployReport(plan.app, plan.version, plan.env, urls, tuple(outcomes))
