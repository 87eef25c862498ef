"""git for tests: commands in a test repository, with the machine's and the user's git config kept out."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def keep_git_config_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No global or system git config, and no repository above `tmp_path`, for the rest of the test."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def git(repo: Path, *args: str) -> str:
    """Run `git ARGS` in `repo`; its output, stripped."""
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL
    ).stdout.strip()
