"""`tako status`: every configured server in parallel, with its tako-server and apps."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tako import __version__
from tako.cli.context import CliContext, get_cli
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
    for app in found:  # certificate states and traffic figures come with each app's `status`, not `list`
        detail = await ex.control(Status(app=str(app.get("app"))))
        if detail.ok and isinstance(detail.data, dict):
            app["certificates"] = detail.data.get("certificates") or {}
            app["traffic"] = detail.data.get("traffic")
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


def one_line(text: str, limit: int = 200) -> str:
    """An error as one line: whitespace runs (newlines included) collapsed, long ones cut with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def traffic_line(figures: dict[str, Any]) -> str:
    """The server's figures of one app over the last minute (less on a server younger than that)."""
    window = float(figures.get("window_seconds") or 0)
    when = "last minute" if window >= 60 else f"last {window:g} s"
    if not figures.get("requests"):
        return f"{when}: no requests"
    text = f"{when}: {figures.get('requests_per_second', 0):.1f} requests/s"
    if figures.get("error_rate") is not None:
        text += f", {figures['error_rate']:.1%} 5xx"
    if figures.get("p95_seconds") is not None:
        text += f", p95 {figures['p95_seconds'] * 1000:.0f} ms"
    return text


def maintenance_on(app: dict[str, Any]) -> bool:
    """Whether the server reports the app in maintenance (`tako maintenance on`)."""
    found = app.get("maintenance")
    return isinstance(found, dict) and found.get("on") is True


def certificate_lines(apps: list[dict[str, Any]]) -> list[str]:
    """One line per certificate of a server: several apps (or routes) naming one host share one line."""
    certs: dict[str, dict[str, Any]] = {}
    for app in apps:
        certs.update(app.get("certificates") or {})
    lines = []
    for host, cert in sorted(certs.items()):
        state = cert.get("state", "?")
        line = f"  certificate for {host}: {state}"
        if cert.get("not_after") and state in ("valid", "user-managed"):
            line += f" until {local_time(cert['not_after'])}"
        if cert.get("last_error"):
            line += f" ({one_line(cert['last_error'])})"
        lines.append(line)
    return lines


def version_warning(console: Console, name: str, server_version: str) -> None:
    """One line when the server's tako-server is not the CLI's version (`tako servers upgrade` fixes it)."""
    if server_version != __version__:
        console.print(
            f"  ! tako-server {server_version} on {name} differs from this CLI's {__version__}: "
            f"tako servers upgrade {name}",
            highlight=False,
        )


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
        version_warning(console, server.name, str(data.get("server_version")))
        if not apps:
            continue
        table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
        # The app's name and its version are what users compare and copy: never cut or folded, however
        # narrow the terminal (the other columns give way first).
        table.add_column("app", no_wrap=True, min_width=max(len(str(a.get("app"))) for a in apps))
        for column in ("env", "state", "instances"):
            table.add_column(column, no_wrap=True)
        table.add_column("version", no_wrap=True, min_width=max(len(str(a.get("version"))) for a in apps))
        table.add_column("deployed", no_wrap=True)
        ordered = sorted(apps, key=lambda a: str(a.get("app")))
        for app in ordered:
            table.add_row(
                str(app.get("app")),
                str(app.get("env") or "-"),
                str(app.get("state")),
                instance_counts(app),
                str(app.get("version")),
                local_time(app.get("deployed_at")),
            )
        console.print(table)
        for app in ordered:
            routes = ", ".join(str(r) for r in app.get("routes") or []) or "none"
            console.print(f"  {app.get('app')}: routes {routes}", highlight=False, soft_wrap=True)
            if app.get("last_error"):
                console.print(
                    f"  {app.get('app')}: last error: {one_line(app['last_error'])}", highlight=False
                )
            if isinstance(app.get("traffic"), dict):
                console.print(f"  {app.get('app')}: {traffic_line(app['traffic'])}", highlight=False)
            if maintenance_on(app):
                console.print(f"  {app.get('app')}: maintenance on (answering 503)", highlight=False)
        for line in certificate_lines(apps):
            console.print(line, highlight=False)


@dataclass(frozen=True)
class StatusFilter:
    """What `tako status` shows: every server of the inventory unless an env narrows it, and matching apps."""

    servers: frozenset[str] | None = None  # None: every server of the inventory
    app: str | None = None
    env: str | None = None

    def keeps(self, app: dict[str, Any]) -> bool:
        return (self.app is None or app.get("app") == self.app) and (
            self.env is None or app.get("env") == self.env
        )


def status_filter(cli: CliContext, env: str | None, app: str | None) -> StatusFilter:
    """`--env E`: apps deployed as env E; inside a project also only E's servers and the project's own app
    (unless --app names another). `--app NAME`: that app only, anywhere."""
    if env is None:
        return StatusFilter(app=app)
    try:
        project = cli.load_project()
    except UsageError:
        return StatusFilter(app=app, env=env)  # outside a project: the env recorded on each server
    project.env(env)  # an unknown env is an error with a did-you-mean hint
    servers = frozenset(name for name, mapping in project.servers.items() if mapping.env == env)
    if not servers:
        raise UsageError(
            f"no server of {project.file} belongs to env {env}",
            hint=f'map one with [servers.NAME] env = "{env}" in tako.toml',
        )
    return StatusFilter(servers=servers, app=app or project.name, env=env)


@click.command()
@click.option(
    "--env", "env", default=None, metavar="ENV", help="Only apps of this env (in a project: its servers)."
)
@click.option("--app", "app", default=None, metavar="NAME", help="Only this app.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(env: str | None, app: str | None, as_json: bool) -> None:
    """Show every server's tako-server and the apps it runs."""
    cli = get_cli()
    inventory = cli.load_inventory()
    if not inventory.servers:
        raise UsageError("no servers configured", hint="add one with `tako servers add HOST --name NAME`")
    wanted = status_filter(cli, env, app)
    entries = sorted(inventory.servers, key=lambda s: s.name)
    if wanted.servers is not None:
        missing = sorted(wanted.servers - {s.name for s in entries})
        if missing:
            raise UsageError(
                f"tako.toml names server(s) not in the inventory: {', '.join(missing)}",
                hint="add them with `tako servers add HOST --name NAME`",
            )
        entries = [s for s in entries if s.name in wanted.servers]
    addresses = [ServerAddress.of(s) for s in entries]
    results = asyncio.run(fan_out(addresses, cli.known_hosts_path, _server_status))
    for result in results:
        if result.value is not None:
            result.value["apps"] = [a for a in result.value.get("apps", []) if wanted.keeps(a)]
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
