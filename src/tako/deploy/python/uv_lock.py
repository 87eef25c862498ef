"""Turn a `uv.lock` into pinned, hashed requirements-file text for the project's runtime dependencies.

Only the project's own `dependencies` (and the extras they request) are followed; dev groups are not.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tako.deploy.python.reqfile import canonical_name
from tako.errors import ConfigError

# (dependency reference, the marker of the edge that reached it, the extras it asks for)
_Edge = tuple[dict[str, Any], str | None, tuple[str, ...]]


@dataclass
class _Reach:
    # None in markers means "reached unconditionally".
    markers: set[str | None] = field(default_factory=set)
    extras: set[str] = field(default_factory=set)


class _Lock:
    """The lock's packages, found by PEP 503 name (and version when a reference gives one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"invalid TOML: {exc}") from exc
        self.packages: list[dict[str, Any]] = data.get("package", [])
        self.by_name: dict[str, list[dict[str, Any]]] = {}
        for pkg in self.packages:
            self.by_name.setdefault(canonical_name(pkg["name"]), []).append(pkg)

    def roots(self) -> list[dict[str, Any]]:
        """The project's own entries (source editable or virtual ".")."""
        roots = [
            p
            for p in self.packages
            if p.get("source", {}).get("editable") == "." or p.get("source", {}).get("virtual") == "."
        ]
        if not roots:
            raise ConfigError(
                str(self.path),
                'no package for the project itself (source editable/virtual ".")',
                hint="regenerate it with `uv lock` in the project directory",
            )
        return roots

    def find(self, ref: dict[str, Any]) -> dict[str, Any]:
        cands = self.by_name.get(canonical_name(ref["name"]), [])
        if "version" in ref:
            cands = [c for c in cands if c.get("version") == ref["version"]]
        if not cands:
            raise ConfigError(str(self.path), f"dependency {ref['name']!r} has no [[package]] entry")
        return cands[0]


def uv_lock_requirements(path: Path) -> str:
    """Requirements-file text pinning every package the project needs at run time, with hashes."""
    lock = _Lock(path)
    lines = []
    for (name, version), entry in sorted(_reachable(lock).items()):
        pkg = lock.find({"name": name, "version": version}) if version else lock.find({"name": name})
        lines.append(_line(path, pkg, entry))
    return "".join(line + "\n" for line in lines)


def _edges(deps: list[dict[str, Any]]) -> list[_Edge]:
    return [(dep, dep.get("marker"), tuple(dep.get("extra", []))) for dep in deps]


def _reachable(lock: _Lock) -> dict[tuple[str, str], _Reach]:
    """Every (name, version) the project's runtime dependencies reach, with the markers and extras."""
    reach: dict[tuple[str, str], _Reach] = {}
    queue = [edge for root in lock.roots() for edge in _edges(root.get("dependencies", []))]
    seen: set[tuple[str, str, str | None, tuple[str, ...]]] = set()
    while queue:
        ref, marker, extras = queue.pop()
        pkg = lock.find(ref)
        ident = (canonical_name(pkg["name"]), str(pkg.get("version", "")))
        state = (*ident, marker, extras)
        if state in seen:
            continue
        seen.add(state)
        entry = reach.setdefault(ident, _Reach())
        entry.markers.add(marker)
        entry.extras.update(extras)
        # A dependency's own markers are relative to its parent; keeping only the edge's marker is an
        # approximation that can only include more packages, never fewer.
        deps = list(pkg.get("dependencies", []))
        for extra in extras:
            deps += pkg.get("optional-dependencies", {}).get(extra, [])
        queue += _edges(deps)
    return reach


def _line(lock: Path, pkg: dict[str, Any], entry: _Reach) -> str:
    name = canonical_name(pkg["name"])
    source = pkg.get("source", {})
    marker = ""
    if None not in entry.markers:
        marker = " ; " + " or ".join(f"({m})" for m in sorted(m for m in entry.markers if m))
    if "registry" in source:
        hashes = [a["hash"] for a in [pkg.get("sdist", {}), *pkg.get("wheels", [])] if a.get("hash")]
        opts = "".join(f" --hash={h}" for h in hashes)
        return f"{name}=={pkg['version']}{marker}{opts}"
    if "path" in source or "directory" in source or "editable" in source:
        rel = source.get("path") or source.get("directory") or source.get("editable")
        path = (lock.parent / rel).resolve()
        return f"{name} @ {path.as_uri()}{marker}"
    if "git" in source:
        return f"{name} @ git+{source['git']}{marker}"
    if "url" in source:
        return f"{name} @ {source['url']}{marker}"
    raise ConfigError(str(lock), f"package {name!r} has a source Tako does not understand: {source}")
