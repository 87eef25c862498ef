"""`tako secrets sync`: rewrite the live release's `.env` on every server of an env and reload the app
with zero downtime."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from tako.config import envfile
from tako.config.inventory import load_inventory
from tako.config.paths import known_hosts_path
from tako.config.project import ProjectConfig, load_project
from tako.deploy import commands
from tako.deploy.layout import AppLayout
from tako.deploy.prepare import env_values, resolve_targets
from tako.errors import DeployError, ServerError, UsageError
from tako.protocol import ERROR_UNKNOWN_APP, Reload, Status
from tako.remote.executor import Executor, sh
from tako.remote.fanout import HostResult, fan_out

# The release's .env before the rewrite (mode kept: 0600), restored if tako-server cannot reload.
_KEEP_ENV = """
set -e
rm -f "$1/.env.before-sync"
if [ -e "$1/.env" ]; then cp -p "$1/.env" "$1/.env.before-sync"; fi
"""
_RESTORE_ENV = """
if [ -e "$1/.env.before-sync" ]; then mv -f "$1/.env.before-sync" "$1/.env"; else rm -f "$1/.env"; fi
"""
_DROP_BACKUP = 'rm -f "$1/.env.before-sync"'


def _lock_holder() -> str:
    # Same shape as a deploy's holder line, so a deploy can recognise (and break) a stale one of ours.
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} syncing secrets since {when}"


async def _live_release(ex: Executor, project: ProjectConfig, env: str) -> tuple[str, str]:
    """(version, release dir) of the release tako-server runs for the app: tako-server is the one owner of
    "which release is live" (after an interrupted deploy it may run a newer one than a link last said)."""
    reply = await ex.control(Status(app=project.name))
    if not reply.ok:
        if reply.extra.get("code") == ERROR_UNKNOWN_APP:
            raise DeployError(
                f"{project.name} is not deployed here",
                hint=f"deploy it first with `tako deploy --env {env}`",
            )
        raise ServerError(f"tako-server could not tell which release of {project.name} runs: {reply.message}")
    data = reply.data if isinstance(reply.data, dict) else {}
    version, path = data.get("version"), data.get("path")
    if not isinstance(version, str) or not isinstance(path, str):
        raise ServerError(f"tako-server's status of {project.name} names no release")
    return version, path


async def sync_server(ex: Executor, project: ProjectConfig, env: str) -> str:
    layout = AppLayout(project.name)
    await _live_release(ex, project, env)  # not deployed here: fail before taking the lock
    # Under the deploy lock: a deploy in progress would otherwise switch `current` to a release whose
    # .env was rendered before this change.
    holder = _lock_holder()
    lock = await ex.run(commands.acquire_lock(layout, holder), check=False, what="lock")
    if lock.exit_status == commands.LOCK_HELD_STATUS:
        raise DeployError(
            f"a deploy or another sync holds the lock {layout.lock} "
            f"({lock.stdout.strip() or 'unknown holder'})",
            hint=f"wait for it to finish, then run `tako secrets sync --env {env}` again; if it was "
            f"interrupted, remove the lock with `ssh {ex.address.ssh_destination} rm -rf {layout.lock}`",
        )
    if not lock.ok:
        raise DeployError(f"cannot create {layout.lock}: {lock.stderr.strip()}")
    try:
        return await _rewrite_and_reload(ex, layout, project, env)
    finally:
        await ex.run(commands.release_lock(layout, holder), check=False, timeout=30, what="unlock")


async def _rewrite_and_reload(ex: Executor, layout: AppLayout, project: ProjectConfig, env: str) -> str:
    version, release = await _live_release(ex, project, env)
    values = env_values(project, env, version)
    await ex.run(sh(_KEEP_ENV, release), what="back up .env")
    await ex.run(commands.write_env(release), input=envfile.render(values).encode(), what="write .env")
    reply = await ex.control(Reload(app=project.name))
    if not reply.ok:
        # The old instances keep serving with the old values: put the old file back so that a later
        # restart (of an instance or of tako-server) does not boot with the values that just failed.
        await ex.run(sh(_RESTORE_ENV, release), check=False, what="restore .env")
        raise DeployError(
            f"tako-server could not reload {project.name}: {reply.message}",
            hint="the running instances keep the previous values and .env was restored; fix the secret "
            f"and run `tako secrets sync --env {env}` again",
        )
    await ex.run(sh(_DROP_BACKUP, release), check=False, what="remove .env backup")
    return version


async def sync_env(project: ProjectConfig, env: str) -> list[HostResult[str]]:
    targets = resolve_targets(project, load_inventory(), env)
    return await fan_out(
        [t.address for t in targets], known_hosts_path(), lambda ex: sync_server(ex, project, env)
    )


def run_sync(project_dir: Path, env: str | None, console: Console) -> int:
    """Sync one env or every env that has servers; print per-server results; return the exit code."""
    project = load_project(project_dir)
    if env is not None:
        envs = [env]
    else:
        envs = sorted({m.env for m in project.servers.values() if m.env != "development"})
        if not envs:
            raise UsageError(
                f"no environment in {project.file} has servers to sync",
                hint='map a server with [servers.<name>] env = "production"',
            )
    failed = 0
    for name in envs:
        for result in asyncio.run(sync_env(project, name)):
            if result.ok:
                console.print(f"✓ {name} / {result.server.name}: .env rewritten, {project.name} reloaded")
            else:
                failed += 1
                console.print(f"✗ {name} / {result.server.name}: {result.error}")
    return 1 if failed else 0
