"""Where Tako keeps its per-user files: `~/.tako` (or `$TAKO_HOME`) and the files inside it."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "TAKO_HOME"


def tako_home() -> Path:
    """`$TAKO_HOME` when set and non-empty, else `~/.tako`. Read on every call so tests can set it."""
    override = os.environ.get(HOME_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path.home() / ".tako"


def inventory_path(home: Path | None = None) -> Path:
    """The global server inventory, `~/.tako/config.toml`."""
    return (home or tako_home()) / "config.toml"


def known_hosts_path(home: Path | None = None) -> Path:
    """Host keys recorded at `tako servers add` and verified on every later connection."""
    return (home or tako_home()) / "known_hosts"


def keys_dir(home: Path | None = None) -> Path:
    """One secrets key file per environment: `~/.tako/keys/<env>`."""
    return (home or tako_home()) / "keys"


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) private to the user: 0700 for any directory created here."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
