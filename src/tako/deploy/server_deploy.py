"""One server's deploy: what it made so far (connection, lock, staged release), running steps of the step
table, and the cleanup that undoes a failed or interrupted deploy so the server keeps serving the previous
release and a re-run just works."""

from __future__ import annotations

import asyncio
import contextlib
import secrets as random_tokens
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tako.deploy import commands
from tako.deploy.layout import AppLayout
from tako.deploy.lock import lock_holder
from tako.deploy.plan import DeployPlan, DeployTarget, size_text
from tako.deploy.releases import ServerReleases
from tako.deploy.report import Outcome, Progress
from tako.errors import StepFailed, TakoError
from tako.remote.executor import Executor
from tako.remote.fanout import HostResult

INTERRUPTED = (
    "interrupted before tako-server was asked to switch: nothing changed, the previous release keeps "
    "serving and the lock is released"
)


# Steps an interrupt cuts short: connecting (nothing runs on the server yet), the upload (its remote end
# stops at end of input) and the release command (the CLI signals it, and `tako-server run-as-app` passes
# that on to the command's process group).
CUT_SHORT = ("connect", "upload", "release")


class Interrupted(Exception):
    """Raised at the start of a step once the deploy was interrupted (before tako-server was asked)."""


@dataclass(frozen=True)
class Step:
    """One named step of a server's deploy or rollback (docs/deployment.md lists them in this order)."""

    name: str
    doing: str  # the progress line; {host}, {size}, {version} and {live} are filled in
    does: str  # what it does, for the docs
    undoes: str  # what the cleanup undoes when the deploy fails after it ("" for nothing)
    run: Callable[[ServerDeploy], Awaitable[None]]
    applies: Callable[[ServerDeploy], bool] = lambda d: True  # asked when the step is reached


def show(show: Callable[..., None], *args: object) -> None:
    """Progress output that cannot fail a deploy: with stdout gone (`tako deploy | head -5`, a closed
    terminal) the deploy goes on, since stopping between steps could leave a server half switched."""
    with contextlib.suppress(OSError):
        show(*args)


class ServerDeploy:
    """One server's deploy (or rollback), with the cleanup state it needs on failure."""

    def __init__(
        self, plan: DeployPlan, target: DeployTarget, progress: Progress, holder: str | None = None
    ) -> None:
        self.plan = plan
        self.target = target
        self.progress = progress
        self.name = target.address.name
        self.layout = AppLayout(plan.app, plan.root)
        self.nonce = random_tokens.token_hex(4)
        self.holder = holder or lock_holder(plan.version)
        # What tako-server is asked to run: the plan's release, or (a rollback) the kept one it chose.
        self.version = plan.version
        self.routes = plan.routes
        self.instances = target.instances
        self.idle_timeout = target.idle_timeout
        # None (a rollback): tako-server keeps the app's list of clients let through maintenance.
        self.maintenance_allow: tuple[str, ...] | None = plan.maintenance_allow
        self.live: str | None = None  # a rollback: what ran before it
        self.kept: ServerReleases | None = None  # a rollback: what the server keeps and runs
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
        self.server_installed = False  # learnt by the disk step's preflight, checked by the server step
        self.failure: StepFailed | None = None
        self.reported = False  # its outcome was shown
        self.task: asyncio.Task[Any] | None = None  # running this server's steps; an interrupt cancels it
        self.done = ""  # what the server serves once switched
        self.previous: dict[str, Any] | None = None  # tako-server's status of the app before the switch

    @property
    def ex(self) -> Executor:
        assert self.executor is not None, "the connect step runs first"
        return self.executor

    @property
    def ok(self) -> bool:
        return self.failure is None

    def say(self, step: str, text: str) -> None:
        """Report progress within `step` (also what a hook reports, e.g. a line of the Python install)."""
        if self.interrupted:
            raise Interrupted  # a step not yet started is skipped
        self.step_name = step
        if text:  # a step whose own code reports (the Python install) has no line of its own
            show(self.progress.step, self.name, step, text)

    def interrupt(self) -> bool:
        """Stop before the next step; True when the step in progress may be cut short too.

        Only the upload is cut (its remote end stops at end of input). A remote command cut short would go
        on running on the server while the cleanup runs beside it (a `mkdir` or `tar` recreating what the
        cleanup just removed), so the others finish first: they take seconds at most.
        """
        self.interrupted = True
        return self.step_name in CUT_SHORT and not self.committed

    async def run_steps(self, steps: Sequence[Step]) -> bool:
        """Run `steps` in order; on any failure undo what this deploy made and record why. False then."""
        if self.failure is not None:
            return False
        self.task = asyncio.current_task()
        try:
            for step in (s for s in steps if s.applies(self)):
                self.say(step.name, self._doing(step))
                await step.run(self)
        except TakoError as exc:
            # Remote errors start with the server's name; the outcome already carries it.
            await self.fail(exc.message.removeprefix(f"{self.name}: "), exc.hint)
        except (asyncio.CancelledError, Interrupted):
            # Interrupted (Ctrl-C, SIGTERM, a closed terminal) before tako-server was asked: undo what this
            # deploy made, so the server is exactly as before.
            await self.fail(INTERRUPTED)
        except Exception as exc:  # one server's unexpected failure must not stop the others
            await self.fail(f"unexpected error: {exc!r}")
        finally:
            self.task = None
        return self.failure is None

    def _doing(self, step: Step) -> str:
        size = size_text(self.plan.archive_size)
        return step.doing.format(
            host=self.target.address.host, size=size, version=self.version, live=self.live
        )

    async def fail(self, message: str, hint: str | None = None, *, step: str | None = None) -> None:
        """Record the failure (at the step in progress unless `step` names another) and clean up."""
        self.failure = StepFailed(step or self.step_name, message, hint=hint)
        await self.cleanup()

    async def cleanup(self) -> None:
        """Undo what this deploy created, best effort; the connection may be gone."""
        ex = self.executor
        if ex is None:
            return
        try:
            if self.staged:  # from the dirs step on (so an upload cut short is removed too)
                await ex.run(
                    commands.rollback(self.staging, self.release, self.replaced), check=False, timeout=30
                )
                await ex.run(commands.remove_upload(self.upload_path), check=False, timeout=30)
                self.staged = False
            if self.locked:
                await ex.run(commands.release_lock(self.layout, self.holder), check=False, timeout=30)
                await ex.run(commands.remove_app_dir_if_empty(self.layout), check=False, timeout=30)
                self.locked = False
        except TakoError:
            pass

    def outcome(self) -> Outcome:
        if self.failure is not None:
            return HostResult(self.target.address, error=self.failure)
        return HostResult(self.target.address, value=self.done)

    async def close(self) -> None:
        if self.executor is not None:
            await self.executor.close()
