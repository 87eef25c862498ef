"""The one "ask on a terminal, else require --yes" check of commands that destroy or overwrite."""

from __future__ import annotations

from dataclasses import dataclass

import click

from tako.cli.context import CliContext
from tako.cli.render import print_message
from tako.errors import UsageError


@dataclass(frozen=True)
class Confirmation:
    """What a command says when it asks: the question on a terminal, the refusal (and how to go on) off
    one, and the line printed when the user answers no."""

    question: str
    refusal: str
    hint: str
    declined: str


def confirm_or_require_yes(cli: CliContext, ask: Confirmation) -> None:
    """Return when the user agreed on a terminal. Off a terminal raise a usage error (exit 2) naming the
    flag; a "no" prints `declined` on stderr and exits 1, so a script never acts on an unanswered question."""
    if not cli.interactive:
        raise UsageError(ask.refusal, hint=ask.hint)
    if not cli.confirm(ask.question):
        print_message(cli.err_console, ask.declined)
        raise click.exceptions.Exit(1)
