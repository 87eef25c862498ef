"""Shared output for CLI commands: consoles, messages (error/hint/success/warning), tables, JSON.

Commands build renderables and print them on the context's consoles; tests render into a fixed-width
console (`render_text`) and compare text. Messages never go through rich markup, so `[servers]` in a
config error prints as written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from tako.errors import TakoError


def make_console(
    *,
    stderr: bool = False,
    file: IO[str] | None = None,
    width: int | None = None,
    force_terminal: bool | None = None,
) -> Console:
    """A console for stdout (or stderr). With no `file` it writes to whatever sys.stdout/err is at print
    time, which is what click's test runner swaps in."""
    return _Console(
        stderr=stderr,
        file=file,
        width=width,
        force_terminal=force_terminal,
        highlight=False,
        markup=False,
        emoji=False,
    )


class _Console(Console):
    """A console whose reader going away (`tako deploy | head -3`) silences it instead of exiting.

    rich raises SystemExit there, which in the middle of a deploy would stop every server between two
    steps; the command should rather go on and end with its own exit status.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):
            # Nothing more reaches the reader; also spares Python's failing flush of the stream at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())


def error_text(message: str, hint: str | None = None) -> Text:
    text = Text()
    text.append(f"error: {message}", style="bold red")
    if hint:
        text.append("\n")
        text.append(f"hint: {hint}", style="yellow")
    return text


def print_error(console: Console, error: TakoError, *, cause: bool = False) -> None:
    """`error: <message>` and, when the error has one, `hint: <hint>`. With `cause`, the chained exception."""
    console.print(error_text(error.message, error.hint), soft_wrap=True)
    if cause and error.__cause__ is not None:
        inner = error.__cause__
        console.print(Text(f"cause: {type(inner).__name__}: {inner}", style="dim"), soft_wrap=True)


def print_message(console: Console, message: str, *, style: str | None = None) -> None:
    console.print(Text(message, style=style or ""), soft_wrap=True)


def print_success(console: Console, message: str) -> None:
    console.print(Text(message, style="green"), soft_wrap=True)


def print_warning(console: Console, message: str) -> None:
    console.print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)


def print_hint(console: Console, message: str) -> None:
    console.print(Text(f"hint: {message}", style="dim"), soft_wrap=True)


def make_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None
) -> Table:
    """A plain table: header row, no outer box, cells as text (never markup)."""
    table = Table(title=title, box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    return table


def print_json(console: Console, data: Any) -> None:
    """Machine-readable output: JSON exactly as `json.dumps` writes it, no colour, no wrapping."""
    console.out(json.dumps(data, indent=2, sort_keys=False), highlight=False)


def render_text(renderable: RenderableType, *, width: int = 100) -> str:
    """What `renderable` prints on a plain console `width` columns wide; trailing spaces removed."""
    buffer = io.StringIO()
    console = make_console(file=buffer, width=width, force_terminal=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
