"""For CLI tests: a context for click's runner (fixed-width consoles, chosen terminal flags) and a TAKO_HOME
in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako.cli.context import CliContext
from tako.cli.render import make_console


def cli_context(tmp_path: Path, *, tty: bool = True) -> CliContext:
    """A context as if stdin and stdout were (`tty`) or were not a terminal, its home `tmp_path/home`."""
    return CliContext(
        console=make_console(width=100),
        err_console=make_console(stderr=True, width=100),
        stdin_isatty=tty,
        stdout_isatty=tty,
        home=tmp_path / "home",
        cwd=tmp_path,
    )


def use_tako_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TAKO_HOME set to `tmp_path/takohome` for the rest of the test (the env keys live there); its path."""
    home = tmp_path / "takohome"
    monkeypatch.setenv("TAKO_HOME", str(home))
    return home
