"""`tako releases`: every release each server of an env keeps, and which one is live."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.console import Console

from tako.cli.context import get_cli
from tako.cli.status import local_time
from tako.deploy.plan import size_text
from tako.deploy.prepare import resolve_targets
from tako.deploy.releases import ServerReleases, server_releases
from tako.remote.fanout import HostResult, fan_out


def _row(mark: str, version: str, when: str, who: str, size: str, commit: str) -> str:
    return f"  {mark} {version:<18} {when:<19}  {who:<24} {size:>10}  {commit}"


def disagreement(results: list[HostResult[ServerReleases]]) -> str | None:
    """A line naming what each server runs when the reachable servers do not run the same release."""
    live = {r.server.name: r.value.live for r in results if r.value is not None}
    if len(set(live.values())) <= 1:
        return None
    parts = [f"{name} runs {version or 'nothing'}" for name, version in sorted(live.items())]
    return "servers disagree on the live release: " + ", ".join(parts)


def render_releases(console: Console, app: str, results: list[HostResult[ServerReleases]]) -> None:
    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    for result in results:
        name = result.server.name
        if result.value is None:
            say(f"✗ {name}: {_error(result)}")
            continue
        found = result.value
        live = found.live or "nothing (not running)"
        say(f"{name}: {app}, live {live}, {len(found.releases)} release(s) kept")
        if found.releases:
            say(_row(" ", "VERSION", "DEPLOYED", "BY", "SIZE", "COMMIT"))
        for entry in found.releases:
            mark = "*" if entry.version == found.live else " "
            when, who, size = local_time(entry.deployed_at), entry.deployed_by or "-", size_text(entry.size)
            say(_row(mark, entry.version, when, who, size, entry.describe_commit()))
    line = disagreement(results)
    if line:
        say(f"! {line}")


def _error(result: HostResult[ServerReleases]) -> str:
    """Why a server could not be listed, without the server's name that remote errors start with."""
    return str(result.error).removeprefix(f"{result.server.name}: ")


def releases_json(results: list[HostResult[ServerReleases]]) -> list[dict[str, Any]]:
    doc = []
    for result in results:
        found = result.value
        doc.append(
            {
                "server": result.server.name,
                "reachable": found is not None,
                "error": _error(result) if result.error is not None else None,
                "live": found.live if found is not None else None,
                "releases": [e.as_json(e.version == found.live) for e in found.releases] if found else [],
            }
        )
    return doc


@click.command()
@click.option("--env", "env", default="production", show_default=True, help="Environment to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per server.")
def releases(env: str, as_json: bool) -> None:
    """List the releases each server keeps (the live one marked *), newest first."""
    cli = get_cli()
    project = cli.load_project()
    addresses = [t.address for t in resolve_targets(project, cli.load_inventory(), env)]
    results = asyncio.run(
        fan_out(addresses, cli.known_hosts_path, lambda ex: server_releases(ex, project.name))
    )
    if as_json:
        click.echo(json.dumps(releases_json(results), indent=2))
    else:
        render_releases(cli.console, project.name, results)
    if any(not r.ok for r in results):
        raise click.exceptions.Exit(1)
