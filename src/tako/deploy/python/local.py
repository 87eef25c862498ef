"""The local half of a deploy's Python dependencies: one wheelhouse per distinct server Python, and what
the release archive must carry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tako.config.paths import tako_home
from tako.deploy.python.layout import wheelhouse_rel
from tako.deploy.python.requirements import Requirements, requirements_key
from tako.deploy.python.target import TargetPython
from tako.deploy.python.wheelhouse import build_wheelhouse


@dataclass(frozen=True)
class PythonDeps:
    """Wheelhouses to ship (archive path → local dir) and which venv key each server installs."""

    extra_dirs: dict[str, Path]
    key_by_server: dict[str, str]


def build_wheelhouses(
    reqs: Requirements,
    targets: Mapping[str, TargetPython],
    output: Callable[[str], None],
    installed: Mapping[str, frozenset[str]] | None = None,
) -> PythonDeps:
    """One wheelhouse per distinct target (`targets`: server -> its Python); a missing wheel fails here,
    before anything is uploaded.

    A target whose venv every one of its servers already has (`installed`: server -> venv keys) is neither
    built nor shipped: those servers only link the release to it.
    """
    cache = tako_home() / "cache" / "wheels"
    extra: dict[str, Path] = {}
    key_by_server: dict[str, str] = {}
    servers_by_target: dict[TargetPython, list[str]] = {}
    for server, target in sorted(targets.items()):
        servers_by_target.setdefault(target, []).append(server)
    for target, servers in servers_by_target.items():
        key = requirements_key(reqs, target)
        if installed is not None and all(key in installed.get(s, frozenset()) for s in servers):
            output(
                f"wheelhouse for {target.describe()} unchanged (cache hit): already installed on "
                f"{', '.join(servers)}, not shipped"
            )
        else:
            house = build_wheelhouse(reqs, target, cache, output=output)
            extra[wheelhouse_rel(house.key)] = house.path
            key = house.key
        for server in servers:
            key_by_server[server] = key
    return PythonDeps(extra, key_by_server)
