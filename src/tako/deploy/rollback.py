"""`tako rollback`: switch every server of an env back to a release it still keeps, as it was deployed
(its code and its own `.env`), with no upload and no rebuild.

Per server: take the deploy lock (the same stale-lock rule as a deploy), list the releases and ask
tako-server which one is live, then ask tako-server to deploy the kept release directory; it rolls its
instances over with zero downtime and points `current` at it. The lock is released in every case. An
interrupt before tako-server is asked changes nothing; after, the server finishes the rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tako.deploy import commands
from tako.deploy.interrupts import interrupts
from tako.deploy.layout import TAKO_ROOT, AppLayout
from tako.deploy.lock import lock_holder, stale_own_lock
from tako.deploy.releases import ServerReleases, server_releases
from tako.errors import DeployError, RemoteError, TakoError
from tako.protocol import Deploy
from tako.remote.connection import ServerAddress, connect
from tako.remote.executor import Executor
from tako.remote.fanout import HostResult

INTERRUPTED = "interrupted before tako-server was asked to switch: nothing changed and the lock is released"

# value: what the server serves now; error: why it was not switched
RollbackOutcome = HostResult[str]
# Told what a server's rollback is doing: (server name, text).
Say = Callable[[str, str], None]


class _Interrupted(Exception):
    """Raised between steps once the rollback was interrupted (before tako-server was asked)."""


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


class ServerRollback:
    """One server's rollback, with the state its cleanup needs."""

    def __init__(
        self,
        app: str,
        address: ServerAddress,
        wanted: str | None,
        known_hosts: Path,
        say: Say,
        root: str = TAKO_ROOT,
    ) -> None:
        self.app = app
        self.say = say
        self.address = address
        self.wanted = wanted
        self.known_hosts = known_hosts
        self.layout = AppLayout(app, root)
        self.holder = lock_holder(wanted or "the previous release", "rolling back to")
        self.executor: Executor | None = None
        self.locked = False
        self.committed = False  # tako-server was asked: from then on the server finishes, interrupt or not
        self.interrupted = False
        self.step = "connect"
        self.task: asyncio.Task[Any] | None = None  # running this rollback; an interrupt may cancel it

    def interrupt(self) -> bool:
        """Stop before the next step; True when the step in progress may be cancelled (only connecting:
        a remote command cut short would go on running beside the cleanup)."""
        self.interrupted = True
        return self.step == "connect"

    def _enter(self, step: str, text: str) -> None:
        if self.interrupted:
            raise _Interrupted
        self.step = step
        with contextlib.suppress(OSError):  # output gone (a closed terminal): the rollback goes on
            self.say(self.address.name, text)

    async def run(self) -> RollbackOutcome:
        self.task = asyncio.current_task()
        try:
            return HostResult(self.address, value=await self._switch())
        except TakoError as exc:
            await self._cleanup()
            message = exc.message.removeprefix(f"{self.address.name}: ")  # the outcome names the server
            return HostResult(self.address, error=DeployError(message, hint=exc.hint))
        except (asyncio.CancelledError, _Interrupted):
            await self._cleanup()
            return HostResult(self.address, error=DeployError(INTERRUPTED))
        except Exception as exc:  # one server's unexpected failure must not stop the others
            await self._cleanup()
            return HostResult(self.address, error=DeployError(f"unexpected error: {exc!r}"))
        finally:
            if self.executor is not None:
                await self.executor.close()

    async def _switch(self) -> str:
        self._enter("connect", f"connecting to {self.address.host}")
        self.executor = ex = Executor(await connect(self.address, self.known_hosts), self.address)
        self._enter("lock", "taking the deploy lock")
        await self._lock(ex)
        self._enter("releases", "listing releases, asking tako-server which one is live")
        found = await server_releases(ex, self.app, self.layout.root)
        version = choose_version(self.app, found, self.wanted)
        if version == found.live:
            await self._unlock(ex)
            return f"{version} is already live"
        self._enter("deploy", f"switching from {found.live} to {version} (rolling update)")
        self.committed = True
        request = Deploy(
            app=self.app,
            version=version,
            path=self.layout.release(version),
            routes=found.routes,
            instances=found.instances,
            idle_timeout=found.idle_timeout,
        )
        try:
            reply = await ex.control(request)
        except RemoteError as exc:
            raise DeployError(
                f"{exc.message}; tako-server may still finish switching to {version}",
                hint="`tako releases` shows what each server runs",
            ) from exc
        if not reply.ok:
            raise DeployError(f"tako-server refused to switch to {version}: {reply.message}")
        await self._unlock(ex)
        return f"rolled back from {found.live} to {version}"

    async def _lock(self, ex: Executor) -> None:
        result = await ex.run(commands.acquire_lock(self.layout, self.holder), check=False, what="lock")
        stale = result.stdout.strip()
        if result.exit_status == commands.LOCK_HELD_STATUS and stale_own_lock(stale):
            await ex.run(commands.break_lock(self.layout, stale), check=False, what="break stale lock")
            result = await ex.run(commands.acquire_lock(self.layout, self.holder), check=False, what="lock")
        if result.exit_status == commands.LOCK_HELD_STATUS:
            raise DeployError(
                f"a deploy holds the lock {self.layout.lock} ({result.stdout.strip() or 'unknown holder'})",
                hint="wait for it to finish, then roll back again",
            )
        if not result.ok:
            raise DeployError(f"cannot create {self.layout.lock}: {result.stderr.strip()}")
        self.locked = True

    async def _unlock(self, ex: Executor) -> None:
        await ex.run(commands.release_lock(self.layout, self.holder), what="unlock")
        self.locked = False

    async def _cleanup(self) -> None:
        """Release the lock this rollback took, best effort (the connection may be gone)."""
        if self.executor is None or not self.locked:
            return
        with contextlib.suppress(TakoError):
            await self.executor.run(commands.release_lock(self.layout, self.holder), check=False, timeout=30)


async def rollback_all(
    app: str,
    servers: Sequence[ServerAddress],
    wanted: str | None,
    known_hosts: Path,
    say: Say,
    *,
    on_interrupt: Callable[[], None] = lambda: None,
    root: str = TAKO_ROOT,
) -> list[RollbackOutcome]:
    """Every server's rollback at once; Ctrl-C stops those not yet switching (tako.deploy.interrupts):
    their lock is released and nothing changed."""
    rollbacks = [ServerRollback(app, address, wanted, known_hosts, say, root) for address in servers]
    with interrupts(rollbacks, on_interrupt):
        return list(await asyncio.gather(*(r.run() for r in rollbacks)))
