"""`tako secrets sync`: rewrite the current release's `.env` on every server of an env and reload the app
with zero downtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console

from tako.config import envfile
from tako.config.inventory import load_inventory
from tako.config.paths import known_hosts_path
from tako.config.project import ProjectConfig, load_project
from tako.deploy import commands
from tako.deploy.layout import AppLayout
from tako.deploy.prepare import env_values, resolve_targets
from tako.errors import DeployError, UsageError
from tako.protocol import Reload
from tako.remote.executor import Executor, cmd
from tako.remote.fanout import HostResult, fan_out


async def sync_server(ex: Executor, project: ProjectConfig, env: str) -> str:
    layout = AppLayout(project.name)
    link = await ex.run(cmd("readlink", layout.current), check=False, what="readlink current")
    target = link.stdout.strip()
    if not link.ok or not target.startswith("releases/"):
        raise DeployError(
            f"{project.name} is not deployed here (no {layout.current})",
            hint=f"deploy it first with `tako deploy --env {env}`",
        )
    version = target.removeprefix("releases/")
    values = env_values(project, env, version)
    await ex.run(
        commands.write_env(layout.release(version)), input=envfile.render(values).encode(), what="write .env"
    )
    reply = await ex.control(Reload(app=project.name))
    if not reply.ok:
        raise DeployError(f"tako-server could not reload {project.name}: {reply.message}")
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
