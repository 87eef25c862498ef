"""`tako maintenance on|off`: every server of an environment answers the app's routes with 503 and a
maintenance page (or serves it again), in parallel, with each server's outcome."""

from __future__ import annotations

import asyncio

import click

from tako.cli.context import get_cli
from tako.deploy.prepare import resolve_targets
from tako.errors import ServerError
from tako.protocol import Maintenance
from tako.remote.executor import Executor
from tako.remote.fanout import fan_out


async def switch_maintenance(ex: Executor, request: Maintenance) -> str:
    """Send `request` to one server's tako-server; what it now does, as one line."""
    hello = await ex.hello()
    if not hello.ok:
        raise ServerError(f"tako-server refused hello: {hello.message}")
    capabilities = (hello.data or {}).get("capabilities") or []
    if "maintenance" not in capabilities:
        raise ServerError(
            "this tako-server has no maintenance mode",
            hint="upgrade it with `tako servers upgrade`, then try again",
        )
    reply = await ex.control(request)
    if not reply.ok:
        raise ServerError(f"tako-server refused: {reply.message}")
    if not request.on:
        return "maintenance off: serving"
    allowed = len(request.allow or ())
    let_through = f", {allowed} allowed client range{'s' if allowed != 1 else ''} pass" if allowed else ""
    return f"maintenance on: answering 503{let_through}"


@click.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option(
    "--env", "env", default="production", show_default=True, help="Environment whose servers to switch."
)
@click.option(
    "--message",
    default="",
    metavar="TEXT",
    help="Shown on the default maintenance page (an app's own maintenance.html takes precedence).",
)
def maintenance(state: str, env: str, message: str) -> None:
    """Put the app in maintenance (503 with a page) on every server of an environment, or take it out.

    \b
    Clients listed in [tako] maintenance_allow of tako.toml still reach the app.
      tako maintenance on --message "Back at 14:00 UTC"
      tako maintenance off
    """
    cli = get_cli()
    project = cli.load_project()
    addresses = [t.address for t in resolve_targets(project, cli.load_inventory(), env)]
    # The message only means something while on; the allow list goes both ways so tako.toml's applies.
    request = Maintenance(
        app=project.name,
        on=state == "on",
        message=message if state == "on" else "",
        allow=project.maintenance_allow,
    )
    results = asyncio.run(
        fan_out(addresses, cli.known_hosts_path, lambda ex: switch_maintenance(ex, request))
    )
    console = cli.console
    for result in results:
        if result.ok:
            console.print(f"✓ {result.server.name}: {project.name} {result.value}", highlight=False)
        else:
            console.print(f"✗ {result.server.name}: {result.error}", highlight=False)
    if any(not r.ok for r in results):
        raise click.exceptions.Exit(1)
