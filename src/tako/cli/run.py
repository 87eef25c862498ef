"""`tako run`: a one-off command on one server of an environment, in the app's live release, as the app, with
the release's environment (its vars, secrets and TAKO_*), the terminal attached."""

from __future__ import annotations

import asyncio
import sys

import click

from tako.cli.context import get_cli
from tako.config.project import load_project
from tako.deploy.prepare import resolve_targets
from tako.errors import UsageError
from tako.remote.connection import ServerAddress
from tako.remote.executor import Command, Executor, cmd
from tako.remote.fanout import with_executor
from tako.remote.session import attach


def pick_server(servers: list[ServerAddress], name: str | None, env: str) -> ServerAddress:
    """The named server of the environment, or its first one in the order of tako.toml."""
    if name is None:
        return servers[0]
    for address in servers:
        if address.name == name:
            return address
    known = ", ".join(a.name for a in servers)
    raise UsageError(
        f"server {name!r} is not a server of environment {env!r}",
        hint=f"its servers: {known}; or pick another environment with --env",
    )


def remote_command(app: str, command: tuple[str, ...]) -> Command:
    """tako-server starts the command as the app (the SSH user cannot become the app's uid); the argv travels
    as one argument each, quoted once by the executor.

    `exec`: sshd runs it through the login shell and signals that shell's whole process group; a shell left
    waiting would die of the SIGINT it forwards and report that instead of the command's own exit status."""
    return cmd("exec", "tako-server", "run-as-app", app, "--", *command)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--env", "env", default="production", show_default=True, help="Environment to run in.")
@click.option("--server", "server", metavar="NAME", help="Server to run on (default: the env's first).")
@click.option(
    "--tty/--no-tty",
    "tty",
    default=None,
    help="Give the command a terminal (default: when stdin and stdout are terminals).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
def run(env: str, server: str | None, tty: bool | None, command: tuple[str, ...]) -> None:
    """Run a command on a server, in the app's live release, as the app, with its environment.

    \b
      tako run -- python manage.py migrate
      tako run --server web2 -- python manage.py shell
      tako run -- sh -c 'echo $DATABASE_URL'

    Exits with the command's status. Ctrl-C is passed to the command (without a terminal: as SIGINT);
    a second Ctrl-C disconnects, and tako-server then hangs the command up.
    """
    cli = get_cli()
    project = load_project(cli.project_dir())
    targets = resolve_targets(project, cli.load_inventory(), env)
    address = pick_server([t.address for t in targets], server, env)
    pty = (cli.stdin_isatty and cli.stdout_isatty) if tty is None else tty
    if pty and not sys.stdin.isatty():
        raise UsageError("--tty needs a terminal on stdin", hint="drop --tty, or run tako from a terminal")

    async def one(ex: Executor) -> int:
        return await attach(ex.conn, address, remote_command(project.name, command), pty=pty)

    code = asyncio.run(with_executor(address, cli.known_hosts_path, one))
    raise click.exceptions.Exit(code)
