"""`tako logs`: app logs from every server of an env in parallel, each line prefixed `[server]`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import click
from rich.console import Console

from tako.cli.context import get_cli
from tako.config.paths import known_hosts_path
from tako.config.project import load_project
from tako.deploy.layout import AppLayout
from tako.deploy.prepare import resolve_targets
from tako.errors import RemoteError, TakoError
from tako.remote.connection import ServerAddress
from tako.remote.executor import Executor, sh
from tako.remote.fanout import with_executor

_TAIL = 'f="$1/app.log"; [ -e "$f" ] || { echo "no log yet at $f" >&2; [ "$3" = follow ] || exit 0; }; '
_TAIL += 'if [ "$3" = follow ]; then exec tail -n "$2" -F "$f" 2>/dev/null; else exec tail -n "$2" "$f"; fi'


async def _stream(address: ServerAddress, log_dir: str, lines: int, follow: bool, console: Console) -> None:
    async def run(ex: Executor) -> None:
        command = sh(_TAIL, log_dir, str(lines), "follow" if follow else "once")
        try:
            process = await ex.conn.create_process(command.render(), encoding="utf-8", errors="replace")
            async for line in process.stdout:
                console.print(f"[{address.name}] {line.rstrip()}", markup=False, highlight=False)
            async for line in process.stderr:
                console.print(f"[{address.name}] {line.rstrip()}", markup=False, highlight=False, style="dim")
            await process.wait()
        except (asyncssh.Error, OSError) as exc:
            raise RemoteError(f"{address.name}: connection lost while reading logs") from exc

    await with_executor(address, known_hosts_path(), run)


async def _all(
    addresses: list[ServerAddress], log_dir: str, lines: int, follow: bool, console: Console
) -> int:
    results = await asyncio.gather(
        *(_stream(a, log_dir, lines, follow, console) for a in addresses), return_exceptions=True
    )
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
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def logs(env: str, lines: int, follow: bool, directory: Path | None) -> None:
    """Show the app's logs from every server of an environment."""
    cli = get_cli()
    project = load_project(directory.resolve() if directory else cli.project_dir())
    targets = resolve_targets(project, cli.load_inventory(), env)
    console = Console(highlight=False, markup=False, soft_wrap=True)
    log_dir = AppLayout(project.name).shared_logs
    try:
        code = asyncio.run(_all([t.address for t in targets], log_dir, lines, follow, console))
    except KeyboardInterrupt:
        code = 0
    raise click.exceptions.Exit(code)
