"""The CLI's one context object: consoles, terminal flags, tako home, project lookup (click ctx.obj)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import click
from rich.console import Console

from tako.cli.render import make_console
from tako.config.inventory import Inventory, load_inventory
from tako.config.paths import inventory_path, keys_dir, known_hosts_path, tako_home
from tako.errors import UsageError

if TYPE_CHECKING:  # project loading imports tako.routing; commands that need it import it when called
    from tako.config.project import ProjectConfig

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class CliContext:
    """What every command needs from the world. Tests build one with fixed-width consoles and tty flags."""

    console: Console
    err_console: Console
    stdin_isatty: bool
    stdout_isatty: bool
    home: Path
    cwd: Path = field(default_factory=Path.cwd)
    verbose: bool = False

    @classmethod
    def create(cls, *, verbose: bool = False, cwd: Path | None = None) -> CliContext:
        return cls(
            console=make_console(),
            err_console=make_console(stderr=True),
            stdin_isatty=_isatty(sys.stdin),
            stdout_isatty=_isatty(sys.stdout),
            home=tako_home(),
            cwd=cwd or Path.cwd(),
            verbose=verbose,
        )

    @property
    def interactive(self) -> bool:
        """Whether we may ask the user a question (prompts go to stderr, so stdout may be piped)."""
        return self.stdin_isatty

    @property
    def inventory_path(self) -> Path:
        return inventory_path(self.home)

    @property
    def known_hosts_path(self) -> Path:
        return known_hosts_path(self.home)

    @property
    def keys_dir(self) -> Path:
        return keys_dir(self.home)

    def confirm(self, question: str, *, default: bool = False) -> bool:
        """Ask a yes/no question on the terminal. Callers check `interactive` first."""
        return click.confirm(question, default=default, err=True)

    def load_inventory(self) -> Inventory:
        return load_inventory(self.inventory_path)

    def project_dir(self) -> Path:
        """The project directory: the nearest one at or above cwd holding a tako.toml."""
        from tako.config.project import PROJECT_FILE, find_project_dir

        found = find_project_dir(self.cwd)
        if found is None:
            raise UsageError(
                f"no {PROJECT_FILE} in {self.cwd} or any parent directory",
                hint="run `tako init` in your app's directory, or pass -C DIR",
            )
        return found

    def load_project(self) -> ProjectConfig:
        from tako.config.project import load_project

        return load_project(self.project_dir())


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # closed stream
        return False


def get_cli(ctx: click.Context | None = None) -> CliContext:
    """The CliContext of the running command, created on first use (e.g. a command invoked on its own)."""
    ctx = ctx or click.get_current_context()
    found = ctx.find_object(CliContext)
    if found is not None:
        return found
    created = CliContext.create()
    ctx.find_root().obj = created
    ctx.obj = created
    return created


def pass_cli(func: Callable[Concatenate[CliContext, P], R]) -> Callable[P, R]:
    """Decorator: call the command with the CliContext as its first argument."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return func(get_cli(), *args, **kwargs)

    return wrapper
