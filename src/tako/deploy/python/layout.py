"""Where a Python app's dependencies live: in the release archive, in a wheelhouse, and on the server.

These names are the contract between the wheelhouse built locally and the install script run remotely.
"""

from __future__ import annotations

WHEELHOUSE_DIR = ".tako-wheels"
"""Directory in the release archive that holds one wheelhouse per target key: `.tako-wheels/<key>/`."""
PINNED_REQUIREMENTS = "requirements.txt"
"""File inside a wheelhouse pinning every wheel in it; the server installs exactly this set."""
COMPLETE_MARKER = ".tako-complete"
"""Written last into a finished wheelhouse (locally) and venv (on the server): its absence means redo."""
VENV_DIR = ".venv"
"""The release's link to its venv, `releases/<version>/.venv -> ../../shared/venvs/<key>`."""
SERVER_PYTHON = "/usr/bin/python3"
"""The Python every server runs apps with; the probe asks it, and venvs are made from it."""


def wheelhouse_rel(key: str) -> str:
    """Where a wheelhouse sits inside the release archive."""
    return f"{WHEELHOUSE_DIR}/{key}"
