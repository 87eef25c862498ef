"""`tako servers add | ls | rm | status | restart | upgrade | reload`: the server inventory
(~/.tako/config.toml) and day-2 operations on one server's tako-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import CliContext, pass_cli
from tako.cli.render import make_table, print_hint, print_json, print_message, print_success, print_warning
from tako.config.inventory import (
    AddOutcome,
    ServerEntry,
    add_server,
    normalize_host,
    plan_add,
    remove_server,
)
from tako.errors import RemoteError, TakoError

if TYPE_CHECKING:
    from tako.deploy.server_upgrade import ServerTako
    from tako.remote.executor import Executor
    from tako.remote.fanout import HostResult

T = TypeVar("T")


@click.group()
def servers() -> None:
    """Manage the servers Tako deploys to (~/.tako/config.toml)."""


def probe(cli: CliContext, entry: ServerEntry) -> str:
    """Log in, record the host key on first use, and return the server's `uname -sm`."""
    from tako.remote.connection import ServerAddress, probe_server

    address = ServerAddress.of(entry)
    print_message(cli.err_console, f"Connecting to {address.ssh_destination} ...")
    try:
        return asyncio.run(probe_server(address, cli.known_hosts_path, trust_new=True))
    except RemoteError as exc:
        exc.hint = (exc.hint + "; " if exc.hint else "") + "--no-test adds the server without connecting"
        raise


@servers.command("add")
@click.argument("host")
@click.option("--name", required=True, help="Name used in tako.toml [servers.<name>].")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="SSH port. [default: Port from ~/.ssh/config for HOST, else 22]",
)
@click.option(
    "--user", default=None, help="Login user. [default: User from ~/.ssh/config for HOST, else tako]"
)
@click.option("--description", default="", help="Free text shown by `tako servers ls`.")
@click.option("--no-test", is_flag=True, help="Do not connect to test SSH and record the host key.")
@pass_cli
def add(
    cli: CliContext, host: str, name: str, port: int | None, user: str | None, description: str, no_test: bool
) -> None:
    """Add server HOST as NAME, after testing SSH (host key trusted on first use).

    HOST may be an alias from ~/.ssh/config: its HostName, Port, User, IdentityFile and ProxyJump apply.
    """
    entry = ServerEntry(name=name, host=normalize_host(host), port=port, description=description, user=user)
    inventory = cli.load_inventory()
    outcome = plan_add(inventory, entry)
    existing = inventory.get(name)
    # An entry added with --no-test has no recorded host key; adding it again is how to record one. A
    # new user is tested too: the host key is already known, but the login is not.
    user_changed = existing is not None and existing.user != entry.user
    known = has_host_key(cli, entry)
    if not no_test and (outcome is AddOutcome.ADDED or user_changed or not known):
        system = probe(cli, entry)
        key = "host key verified" if known else "host key recorded"
        print_message(cli.console, f"Connected to {name}: {system.strip() or 'ok'}; {key}.")
    if outcome is AddOutcome.UNCHANGED:
        print_message(cli.console, f"Server {name} ({entry.endpoint}) is already configured.")
        return
    add_server(entry, cli.inventory_path)
    if outcome is AddOutcome.UPDATED:
        assert existing is not None
        changed = [
            what
            for what, old, new in (
                ("user", existing.user, user),
                ("description", existing.description, description),
            )
            if old != new
        ]
        print_success(cli.console, f"Updated the {' and '.join(changed)} of server {name}.")
        return
    print_success(cli.console, f"Added server {name} ({entry.endpoint}) to {cli.inventory_path}.")
    print_hint(cli.console, f'map it to an environment in tako.toml: [servers.{name}] env = "production"')


def has_host_key(cli: CliContext, entry: ServerEntry) -> bool:
    from tako.remote.connection import ServerAddress, recorded_keys

    return bool(recorded_keys(cli.known_hosts_path, ServerAddress.of(entry)))


def _login_row(entry: ServerEntry) -> tuple[str, int]:
    """The user and port a connection would use (inventory, then ~/.ssh/config, then tako and 22)."""
    from tako.remote.connection import ServerAddress

    login = ServerAddress.of(entry).login()
    return login.user, login.port


@servers.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_cli
def ls(cli: CliContext, as_json: bool) -> None:
    """List the configured servers, with the user and port each login uses."""
    entries = sorted(cli.load_inventory().servers, key=lambda e: e.name)
    logins = [_login_row(e) for e in entries]
    if as_json:
        print_json(
            cli.console,
            [
                {"name": e.name, "host": e.host, "user": user, "port": port, "description": e.description}
                for e, (user, port) in zip(entries, logins, strict=True)
            ],
        )
        return
    if not entries:
        print_message(cli.console, "No servers configured.")
        print_hint(cli.console, "add one with `tako servers add HOST --name NAME`")
        return
    table = make_table(
        ["NAME", "HOST", "USER", "PORT", "DESCRIPTION"],
        [
            (e.name, e.host, user, port, e.description)
            for e, (user, port) in zip(entries, logins, strict=True)
        ],
    )
    cli.console.print(table)


@servers.command("rm")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (required off a terminal).")
@pass_cli
def rm(cli: CliContext, name: str, yes: bool) -> None:
    """Remove server NAME from the inventory (nothing is changed on the server)."""
    entry = cli.load_inventory().require(name)
    if not yes:
        ask = Confirmation(
            question=f"Remove server {name} ({entry.endpoint}) from {cli.inventory_path}?",
            refusal=f"not removing server {name!r} without confirmation (no terminal to ask on)",
            hint=f"pass --yes: `tako servers rm {name} --yes`",
            declined=f"Server {name} not removed.",
        )
        confirm_or_require_yes(cli, ask)
    remove_server(name, cli.inventory_path)
    print_success(cli.console, f"Removed server {name} ({entry.endpoint}).")
    _forget_host_key(cli, entry)
    for project_file in _projects_using(cli, name):
        print_warning(
            cli.err_console,
            f"{project_file} still maps [servers.{name}]; deploys there will fail until removed",
        )


def _forget_host_key(cli: CliContext, entry: ServerEntry) -> None:
    """Drop the host's pinned key (no other entry can share its address), so a reinstalled machine can be
    added again without editing known_hosts by hand."""
    from tako.remote.connection import ServerAddress, forget_keys

    if forget_keys(cli.known_hosts_path, ServerAddress.of(entry)):
        print_message(cli.console, f"Forgot its host key in {cli.known_hosts_path}.")


def _projects_using(cli: CliContext, name: str) -> list[Path]:
    """The current project's tako.toml if it maps this server (a broken one is not our concern here)."""
    with contextlib.suppress(TakoError, OSError):
        project = cli.load_project()
        if name in project.servers:
            return [project.file]
    return []


def _run_on(cli: CliContext, name: str, fn: Callable[[Executor], Awaitable[T]]) -> T:
    from tako.remote.connection import ServerAddress
    from tako.remote.fanout import with_executor

    entry = cli.load_inventory().require(name)
    address = ServerAddress.of(entry)
    return asyncio.run(with_executor(address, cli.known_hosts_path, fn))


@servers.command("status")
@click.argument("name")
@pass_cli
def status(cli: CliContext, name: str) -> None:
    """Show whether tako-server is installed and running on NAME, and its apps."""
    from tako.deploy.server_admin import inspect_server

    info = _run_on(cli, name, inspect_server)
    print_message(
        cli.console,
        f"{name}: tako-server {'installed, version ' + info.version if info.installed else 'NOT installed'}; "
        f"service {info.service}",
    )
    if info.control_error:
        print_warning(cli.err_console, f"control socket: {info.control_error}")
    if info.apps:
        rows = []
        for app in sorted(info.apps, key=lambda a: str(a.get("app"))):
            instances = app.get("instances") or []
            healthy = sum(1 for i in instances if i.get("healthy"))
            rows.append([app.get("app"), app.get("state"), f"{healthy}/{len(instances)}", app.get("version")])
        table = make_table(["app", "state", "instances", "version"], rows)
        cli.console.print(table)
    elif info.installed and not info.control_error:
        print_message(cli.console, "no apps deployed")
    if not info.installed or info.control_error:
        raise click.exceptions.Exit(1)


@servers.command("restart")
@click.argument("name")
@pass_cli
def restart(cli: CliContext, name: str) -> None:
    """Restart tako-server on NAME without dropping a request: a new process takes over the listeners,
    the old one finishes what is in flight. If the new one cannot start, the old one keeps serving."""
    from tako.deploy.server_admin import restart_server

    version = _run_on(cli, name, restart_server)
    print_success(cli.console, f"tako-server {version} restarted on {name}.")


@servers.command("upgrade")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="every server in ~/.tako/config.toml")
@click.option("--check", is_flag=True, help="only report each server's tako-server version")
@pass_cli
def upgrade(cli: CliContext, name: str | None, every: bool, check: bool) -> None:
    """Install on NAME (or --all) the tako-server of this CLI's version, built here and shipped (no
    package index needed there), then hand over without dropping a request."""
    from tako import __version__
    from tako.deploy import server_upgrade
    from tako.remote.connection import ServerAddress
    from tako.remote.fanout import fan_out

    if bool(name) == every:
        raise click.UsageError("name one server, or give --all")
    inventory = cli.load_inventory()
    entries = inventory.servers if every else (inventory.require(name or ""),)
    addresses = [ServerAddress.of(entry) for entry in entries]
    found = asyncio.run(fan_out(addresses, cli.known_hosts_path, server_upgrade.probe))
    failed = _report_versions(cli, found, __version__)
    if check or not addresses:
        if failed:
            raise click.exceptions.Exit(1)
        return
    results = _upgrade_each(cli, [r for r in found if r.value is not None])
    for result in results:
        if result.ok:
            print_success(cli.console, f"{result.server.name}: tako-server {result.value} serves.")
        else:
            print_warning(cli.err_console, f"{result.server.name}: {result.error}")
    if failed or not all(r.ok for r in results):
        raise click.exceptions.Exit(1)


def _upgrade_each(cli: CliContext, found: list[HostResult[ServerTako]]) -> list[HostResult[str]]:
    """Build the wheels the servers need (compiled for a server with this CLI's Python, pure Python for
    the others) once, here; then install and hand over on every server in parallel."""
    import tempfile

    from tako.deploy import server_upgrade
    from tako.remote.fanout import fan_out

    kinds = {info.python != server_upgrade.local_python() for r in found if (info := r.value) is not None}
    with tempfile.TemporaryDirectory(prefix="tako-upgrade-") as tmp:
        wheels = {}
        for pure in sorted(kinds):
            print_message(cli.console, f"building the tako-server wheel{' (pure Python)' if pure else ''}...")
            wheels[pure] = server_upgrade.build_wheel(Path(tmp) / str(pure), pure=pure)

        async def one(ex: Executor) -> str:
            return await server_upgrade.upgrade_server(ex, wheels)

        return asyncio.run(fan_out([r.server for r in found], cli.known_hosts_path, one))


def _report_versions(cli: CliContext, found: list[HostResult[ServerTako]], local: str) -> bool:
    """One line per server; True when some server could not be asked."""
    for result in found:
        info = result.value
        if info is None:
            print_warning(cli.err_console, f"{result.server.name}: {result.error}")
        elif info.current:
            print_message(cli.console, f"{result.server.name}: tako-server {local} (this CLI's version)")
        else:
            print_message(
                cli.console, f"{result.server.name}: tako-server {info.version or '?'}, this CLI {local}"
            )
    return not all(r.ok for r in found)


@servers.command("reload")
@click.argument("name")
@pass_cli
def reload(cli: CliContext, name: str) -> None:
    """Zero-downtime reload of every app on NAME (re-reads each release's .env)."""
    from tako.deploy.server_admin import reload_apps

    apps = _run_on(cli, name, reload_apps)
    print_success(cli.console, f"Reloaded {len(apps)} app(s) on {name}: {', '.join(apps) or 'none'}.")
