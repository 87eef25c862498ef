"""`tako servers add | ls | rm | status | restart | reload`: the server inventory (~/.tako/config.toml)
and day-2 operations on one server's tako-server."""

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
    from tako.remote.executor import Executor

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


@servers.command("reload")
@click.argument("name")
@pass_cli
def reload(cli: CliContext, name: str) -> None:
    """Zero-downtime reload of every app on NAME (re-reads each release's .env)."""
    from tako.deploy.server_admin import reload_apps

    apps = _run_on(cli, name, reload_apps)
    print_success(cli.console, f"Reloaded {len(apps)} app(s) on {name}: {', '.join(apps) or 'none'}.")
