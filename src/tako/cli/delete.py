"""`tako delete`: remove an app from the servers of an environment (runtime state, routes and files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import get_cli
from tako.config.project import find_project_dir, load_project
from tako.deploy.delete import delete_app
from tako.deploy.prepare import resolve_targets
from tako.errors import UsageError
from tako.remote.connection import ServerAddress
from tako.remote.fanout import fan_out


@click.command()
@click.option(
    "--env", "env", default="production", show_default=True, help="Environment to remove the app from."
)
@click.option("--app", "app_name", help="App name (outside a project directory).")
@click.option(
    "--server", "server_names", multiple=True, help="Server to delete from (outside a project; repeatable)."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required off a terminal).")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def delete(
    env: str, app_name: str | None, server_names: tuple[str, ...], yes: bool, directory: Path | None
) -> None:
    """Remove an app from the servers of an environment."""
    cli = get_cli()
    inventory = cli.load_inventory()
    project_dir = find_project_dir((directory or cli.cwd).resolve()) if app_name is None else None
    if project_dir is not None:
        project = load_project(project_dir)
        app = project.name
        addresses = [t.address for t in resolve_targets(project, inventory, env)]
    else:
        if not app_name or not server_names:
            raise UsageError(
                "outside a project directory, say which app and which servers",
                hint="run it in the project directory, or pass --app NAME --server SERVER [--server ...]",
            )
        app = app_name
        addresses = []
        for name in server_names:
            entry = inventory.get(name)
            if entry is None:
                raise UsageError(f"unknown server {name!r}", hint="see `tako servers ls`")
            addresses.append(ServerAddress.of(entry))
    names = ", ".join(a.name for a in addresses)
    if not yes:
        ask = Confirmation(
            question=f"Delete {app} ({env}) from {names}? Its releases, logs and its data dir "
            "(shared/data, TAKO_DATA_DIR) are removed for good.",
            refusal=f"deleting {app!r} from {names} needs confirmation",
            hint="pass --yes to delete without a terminal",
            declined=f"{app} not deleted.",
        )
        confirm_or_require_yes(cli, ask)
    console = cli.console
    results = asyncio.run(fan_out(addresses, cli.known_hosts_path, lambda ex: delete_app(ex, app)))
    for result in results:
        if result.ok:
            console.print(f"✓ {result.server.name}: {app} {result.value}")
        else:
            console.print(f"✗ {result.server.name}: {result.error}")
    if any(not r.ok for r in results):
        raise click.exceptions.Exit(1)
