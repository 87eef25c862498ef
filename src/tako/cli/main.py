"""The `tako` entry point: the command group, lazy subcommand loading, the one place errors are printed."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from tako import __version__
from tako.cli.context import CliContext, get_cli
from tako.cli.render import make_console, print_error
from tako.errors import TakoError

# Subcommands in the order `tako --help` lists them (the order of a first deploy). They are imported only
# when used, so `tako servers ls` does not pay for loading SSH and crypto libraries.
COMMANDS: dict[str, str] = {
    "init": "tako.cli.init:init",
    "deploy": "tako.cli.deploy:deploy",
    "status": "tako.cli.status:status",
    "logs": "tako.cli.logs:logs",
    "run": "tako.cli.run:run",
    "releases": "tako.cli.releases:releases",
    "rollback": "tako.cli.rollback:rollback",
    "servers": "tako.cli.servers:servers",
    "secrets": "tako.cli.secrets:secrets",
    "maintenance": "tako.cli.maintenance:maintenance",
    "delete": "tako.cli.delete:delete",
}


class TakoErrorExit(click.ClickException):
    """Carries a TakoError through click so that every runner (ours, CliRunner) prints it the same way."""

    def __init__(self, error: TakoError, *, verbose: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code  # type: ignore[misc]  # per error, not per class
        self.verbose = verbose

    def show(self, file: IO[Any] | None = None) -> None:
        print_error(make_console(stderr=True, file=file), self.error, cause=self.verbose)


class TakoGroup(click.Group):
    """A group whose subcommands are loaded on demand and whose TakoErrors become clean exits."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        extra = sorted(name for name in self.commands if name not in COMMANDS)
        return [*COMMANDS, *extra]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        self.commands[cmd_name] = command
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            close = get_close_matches(args[0], self.list_commands(ctx), n=1) if args else []
            if close and exc.message.startswith("No such command"):
                raise click.UsageError(f"{exc.message} Did you mean {close[0]!r}?", ctx) from exc
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TakoError as exc:
            found = ctx.find_object(CliContext)
            raise TakoErrorExit(exc, verbose=bool(found and found.verbose)) from exc


@click.group(cls=TakoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tako", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Show more detail, including the cause of errors.")
@click.option(
    "-C",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Run as if tako was started in DIRECTORY.",
    metavar="DIRECTORY",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, directory: Path | None) -> None:
    """Deploy web apps to your own Linux servers over SSH.

    \b
    First deploy:
      tako init                              write tako.toml
      tako servers add HOST --name web1      register a server (SSH as user tako)
      tako deploy --env production           build, upload and roll out
    """
    # Tests may pass a prepared CliContext as `obj`; keep it.
    context = ctx.obj if isinstance(ctx.obj, CliContext) else get_cli(ctx)
    ctx.obj = context
    context.verbose = context.verbose or verbose
    if directory is not None:
        # Like `git -C`: really change directory, so every command (and every build step) sees it.
        os.chdir(directory)
        context.cwd = Path.cwd()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run `tako`; the only place the CLI prints errors and exits."""
    try:
        result = cli.main(args=argv, prog_name="tako", standalone_mode=False)
    except click.ClickException as exc:  # includes TakoErrorExit
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C (or EOF at a prompt): the user knows what they did; no traceback, no message.
        code = 130
    except BrokenPipeError:
        # The reader of our output went away (`tako status | head -3`): end as a program killed by SIGPIPE
        # would, without a traceback, and without Python's own error when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    else:
        # click returns the exit code of ctx.exit(n) here; commands themselves return None.
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
