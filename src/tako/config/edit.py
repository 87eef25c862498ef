"""Edits to tako.toml that keep the user's comments and formatting (tomlkit)."""

from __future__ import annotations

from pathlib import Path

import tomlkit
from tomlkit.items import Table

from tako.config.loading import write_atomic


def add_server_mapping(file: Path, server: str, env: str) -> None:
    """Add `[servers.<server>] env = "<env>"`, keeping everything else as written."""
    doc = tomlkit.parse(file.read_text())
    servers = doc.get("servers")
    if not isinstance(servers, Table):
        servers = tomlkit.table(is_super_table=True)
        doc["servers"] = servers
    entry = tomlkit.table()
    entry.add("env", env)
    servers[server] = entry
    write_atomic(file, tomlkit.dumps(doc))
