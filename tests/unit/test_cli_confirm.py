"""The shared "ask on a terminal, else require --yes" check, through a click command and click's runner."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner, Result
from tests.support.cli import cli_context

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import CliContext
from tako.cli.main import cli
from tako.errors import UsageError

ASK = Confirmation(
    question="Remove the thing?",
    refusal="not removing the thing: no terminal to ask on",
    hint="pass --yes: `remove --yes`",
    declined="The thing was not removed.",
)


@click.command()
@click.pass_obj
def remove(cli: CliContext) -> None:
    confirm_or_require_yes(cli, ASK)
    click.echo("removed")


def run(tmp_path: Path, *, terminal: bool, input: str | None = None) -> Result:
    return CliRunner().invoke(remove, [], obj=cli_context(tmp_path, tty=terminal), input=input)


def test_off_a_terminal_it_refuses_and_names_the_flag(tmp_path: Path) -> None:
    result = run(tmp_path, terminal=False)
    assert result.stdout == ""
    error = result.exception
    assert isinstance(error, UsageError)
    assert (error.message, error.hint, error.exit_code) == (ASK.refusal, ASK.hint, 2)


def test_a_no_on_a_terminal_exits_1_with_the_declined_line(tmp_path: Path) -> None:
    result = run(tmp_path, terminal=True, input="n\n")
    assert result.exit_code == 1
    assert "Remove the thing? [y/N]" in result.stderr
    assert "The thing was not removed." in result.stderr
    assert "removed\n" not in result.stdout


def test_a_yes_on_a_terminal_goes_on(tmp_path: Path) -> None:
    result = run(tmp_path, terminal=True, input="y\n")
    assert result.exit_code == 0
    assert result.stdout == "removed\n"


def test_delete_asks_and_says_what_was_not_deleted(tmp_path: Path) -> None:
    env = {"TAKO_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "user"), "TAKO_SSH_KEY": None}
    add = ["servers", "add", "10.0.0.1", "--name", "web1", "--no-test"]
    assert CliRunner().invoke(cli, add, env=env).exit_code == 0
    delete = ["delete", "--app", "shop", "--server", "web1"]
    result = CliRunner().invoke(cli, delete, env=env, obj=cli_context(tmp_path), input="n\n")
    assert result.exit_code == 1
    assert "Delete shop (production) from web1?" in result.stderr
    assert "its data dir (shared/data, TAKO_DATA_DIR)" in result.stderr
    assert "shop not deleted." in result.stderr
    refused = CliRunner().invoke(cli, delete, env=env, obj=cli_context(tmp_path, tty=False))
    assert refused.exit_code == 2
    assert "hint: pass --yes to delete without a terminal" in refused.stderr
