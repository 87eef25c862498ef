"""`tako logs`: app logs (or, with `--access`, access logs) from every server of an env in parallel, each
line prefixed `[server]` as it arrives."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from tako.cli import access_lines
from tako.cli.context import get_cli
from tako.config.paths import known_hosts_path
from tako.config.project import load_project
from tako.deploy.layout import AppLayout
from tako.deploy.prepare import resolve_targets
from tako.errors import TakoError
from tako.errors.library import TRANSPORT_ERRORS, remote_failure
from tako.remote.connection import ServerAddress
from tako.remote.executor import Executor, sh
from tako.remote.fanout import with_executor

INTERRUPT_GRACE = 2.0  # seconds Ctrl-C leaves the SSH connections to close before the process just exits

_TAIL = 'f="$1/$4"; [ -e "$f" ] || { echo "no log yet at $f" >&2; [ "$3" = follow ] || exit 0; }; '
_TAIL += 'if [ "$3" = follow ]; then exec tail -n "$2" -F "$f" 2>/dev/null; else exec tail -n "$2" "$f"; fi'


@dataclass(frozen=True)
class _Reading:
    """What to read on each server and how to show its lines."""

    log_dir: str
    lines: int
    follow: bool
    access: bool = False
    statuses: tuple[int, int] | None = None
    as_json: bool = False

    def show(self, server: str, line: str) -> str | None:
        if not self.access:
            return f"[{server}] {line}"
        return access_lines.render(server, line, self.statuses, self.as_json)


async def _stream(address: ServerAddress, reading: _Reading, console: Console) -> None:
    async def run(ex: Executor) -> None:
        name = "access.log" if reading.access else "app.log"
        command = sh(_TAIL, reading.log_dir, str(reading.lines), "follow" if reading.follow else "once", name)
        try:
            process = await ex.conn.create_process(command.render(), encoding="utf-8", errors="replace")
            # Blank lines are skipped: a bare "[server] " prefix says nothing and read as a stray line.
            async for line in process.stdout:
                shown = reading.show(address.name, line.rstrip()) if line.strip() else None
                if shown is not None:
                    console.print(shown, markup=False, highlight=False)
            async for line in process.stderr:
                if line.strip():
                    console.print(
                        f"[{address.name}] {line.rstrip()}", markup=False, highlight=False, style="dim"
                    )
            await process.wait()
        except TRANSPORT_ERRORS as exc:
            lost = f"{address.name}: connection lost while reading logs"
            raise remote_failure(exc, address.name, "reading logs", message=lost) from exc

    await with_executor(address, known_hosts_path(), run)


async def _all(addresses: list[ServerAddress], reading: _Reading, console: Console) -> int:
    streams = asyncio.gather(*(_stream(a, reading, console) for a in addresses), return_exceptions=True)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        # Ctrl-C ends the command promptly: the streams are cancelled (their SSH connections close), and
        # should closing hang (a busy machine, a server that stopped answering), the process ends anyway.
        streams.cancel()
        loop.call_later(INTERRUPT_GRACE, _exit_now)

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        results = await streams
    except asyncio.CancelledError:
        return 0
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    failed = 0
    for address, result in zip(addresses, results, strict=True):
        if isinstance(result, TakoError):
            failed += 1
            console.print(
                f"[{address.name}] error: {result.message}", markup=False, highlight=False, style="red"
            )
        elif isinstance(result, BaseException):
            raise result
    return 1 if failed else 0


@click.command()
@click.option(
    "--env", "env", default="production", show_default=True, help="Environment whose servers to read."
)
@click.option("-n", "--lines", default=100, show_default=True, help="Lines of history per server.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep streaming new lines.")
@click.option("--access", is_flag=True, help="Requests from the access log instead of the app's output.")
@click.option("--status", "status", help="With --access: only this status (404) or class (5xx).")
@click.option("--json", "as_json", is_flag=True, help="With --access: JSON lines, the server's name added.")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def logs(
    env: str,
    lines: int,
    follow: bool,
    access: bool,
    status: str | None,
    as_json: bool,
    directory: Path | None,
) -> None:
    """Show the app's logs (or its access log) from every server of an environment."""
    if (status is not None or as_json) and not access:
        raise click.UsageError("--status and --json filter the access log: add --access")
    statuses = access_lines.parse_status(status)
    cli = get_cli()
    project = load_project(directory.resolve() if directory else cli.project_dir())
    targets = resolve_targets(project, cli.load_inventory(), env)
    console = Console(highlight=False, markup=False, soft_wrap=True)
    log_dir = AppLayout(project.name).shared_logs
    reading = _Reading(log_dir, lines, follow, access, statuses, as_json)
    try:
        code = asyncio.run(_all([t.address for t in targets], reading, console))
    except KeyboardInterrupt:  # before the handler was installed, or a second Ctrl-C
        code = 0
    raise click.exceptions.Exit(code)


def _exit_now() -> None:
    sys.stdout.flush()
    os._exit(0)
