"""Turn a `uv.lock` into pinned, hashed requirements-file text for the project's runtime dependencies.

Only the project's own `dependencies` (and the extras they request) are followed; dev groups are not.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tako.errors import ConfigError


@dataclass
class _Reach:
    # None in markers means "reached unconditionally".
    markers: set[str | None] = field(default_factory=set)
    extras: set[str] = field(default_factory=set)


def _canonical(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def uv_lock_requirements(lock: Path) -> str:
    """Requirements-file text pinning every package the project needs at run time, with hashes."""
    try:
        data = tomllib.loads(lock.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(lock), f"invalid TOML: {exc}") from exc
    packages: list[dict[str, Any]] = data.get("package", [])
    by_name: dict[str, list[dict[str, Any]]] = {}
    for pkg in packages:
        by_name.setdefault(_canonical(pkg["name"]), []).append(pkg)
    roots = [
        p
        for p in packages
        if p.get("source", {}).get("editable") == "." or p.get("source", {}).get("virtual") == "."
    ]
    if not roots:
        raise ConfigError(
            str(lock),
            'no package for the project itself (source editable/virtual ".")',
            hint="regenerate it with `uv lock` in the project directory",
        )

    def find(ref: dict[str, Any]) -> dict[str, Any]:
        cands = by_name.get(_canonical(ref["name"]), [])
        if "version" in ref:
            cands = [c for c in cands if c.get("version") == ref["version"]]
        if not cands:
            raise ConfigError(str(lock), f"dependency {ref['name']!r} has no [[package]] entry")
        return cands[0]

    reach: dict[tuple[str, str], _Reach] = {}
    queue: list[tuple[dict[str, Any], str | None, tuple[str, ...]]] = []
    for root in roots:
        for dep in root.get("dependencies", []):
            queue.append((dep, dep.get("marker"), tuple(dep.get("extra", []))))
    seen: set[tuple[str, str, str | None, tuple[str, ...]]] = set()
    while queue:
        ref, marker, extras = queue.pop()
        pkg = find(ref)
        ident = (_canonical(pkg["name"]), str(pkg.get("version", "")))
        state = (*ident, marker, extras)
        if state in seen:
            continue
        seen.add(state)
        entry = reach.setdefault(ident, _Reach())
        entry.markers.add(marker)
        entry.extras.update(extras)
        # A dependency's own markers are relative to its parent; keeping only the edge's marker is an
        # approximation that can only include more packages, never fewer.
        edges = list(pkg.get("dependencies", []))
        for extra in extras:
            edges += pkg.get("optional-dependencies", {}).get(extra, [])
        for dep in edges:
            queue.append((dep, dep.get("marker"), tuple(dep.get("extra", []))))

    lines = []
    for (name, _version), entry in sorted(reach.items()):
        pkg = find({"name": name, "version": _version}) if _version else find({"name": name})
        lines.append(_line(lock, pkg, entry))
    return "".join(line + "\n" for line in lines)


def _line(lock: Path, pkg: dict[str, Any], entry: _Reach) -> str:
    name = _canonical(pkg["name"])
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
