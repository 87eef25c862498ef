"""`tako status`: every configured server in parallel, with its tako-server and apps."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tako.cli.context import get_cli
from tako.errors import ServerError, UsageError
from tako.protocol import List, Status
from tako.remote.connection import ServerAddress
from tako.remote.executor import Executor
from tako.remote.fanout import HostResult, fan_out


async def _server_status(ex: Executor) -> dict[str, Any]:
    hello = await ex.hello()
    if not hello.ok:
        raise ServerError(f"tako-server refused hello: {hello.message}")
    apps = await ex.control(List())
    if not apps.ok:
        raise ServerError(f"tako-server refused list: {apps.message}")
    found = list(apps.data or [])
    for app in found:  # certificate states come with each app's `status`, not with `list`
        detail = await ex.control(Status(app=str(app.get("app"))))
        if detail.ok and isinstance(detail.data, dict):
            app["certificates"] = detail.data.get("certificates") or {}
    return {"server_version": (hello.data or {}).get("server_version", "?"), "apps": found}


def local_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def instance_counts(app: dict[str, Any]) -> str:
    instances = app.get("instances") or []
    healthy = sum(1 for i in instances if i.get("healthy"))
    return f"{healthy}/{len(instances)}"


def render_status(console: Console, results: list[HostResult[dict[str, Any]]]) -> None:
    for result in results:
        server = result.server
        if not result.ok:
            console.print(
                f"✗ {server.name} ({server.host}): unreachable or failing: {result.error}", highlight=False
            )
            continue
        data = result.value or {}
        apps = data.get("apps", [])
        console.print(
            f"✓ {server.name} ({server.host}): tako-server {data.get('server_version')} active, "
            f"{len(apps)} app{'s' if len(apps) != 1 else ''}",
            highlight=False,
        )
        if not apps:
            continue
        table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
        for column in ("app", "env", "state", "instances", "version", "deployed"):
            table.add_column(column)
        for app in sorted(apps, key=lambda a: str(a.get("app"))):
            table.add_row(
                str(app.get("app")),
                str(app.get("env") or "-"),
                str(app.get("state")),
                instance_counts(app),
                str(app.get("version")),
                local_time(app.get("deployed_at")),
            )
        console.print(table)
        for app in apps:
            if app.get("last_error"):
                console.print(f"  {app.get('app')}: last error: {app['last_error']}", highlight=False)
            for host, cert in sorted((app.get("certificates") or {}).items()):
                state = cert.get("state", "?")
                line = f"  {app.get('app')}: certificate for {host}: {state}"
                if cert.get("not_after") and state in ("valid", "user-managed"):
                    line += f" until {local_time(cert['not_after'])}"
                if cert.get("last_error"):
                    line += f" ({cert['last_error']})"
                console.print(line, highlight=False)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(as_json: bool) -> None:
    """Show every server's tako-server and the apps it runs."""
    cli = get_cli()
    inventory = cli.load_inventory()
    if not inventory.servers:
        raise UsageError("no servers configured", hint="add one with `tako servers add HOST --name NAME`")
    addresses = [ServerAddress.of(s) for s in sorted(inventory.servers, key=lambda s: s.name)]
    results = asyncio.run(fan_out(addresses, cli.known_hosts_path, _server_status))
    console = cli.console
    if as_json:
        doc = [
            {
                "server": r.server.name,
                "host": r.server.host,
                "reachable": r.ok,
                "error": None if r.ok else str(r.error),
                **(r.value or {}),
            }
            for r in results
        ]
        click.echo(json.dumps(doc, indent=2))
    else:
        render_status(console, results)
    if any(not r.ok for r in results):
        raise click.exceptions.Exit(1)
