"""A project's Python dependencies: where they come from (requirements.txt, uv.lock, pyproject.toml) and
the cache key of a wheelhouse built from them for one target."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from tako.deploy.python import reqfile
from tako.deploy.python.target import TargetPython
from tako.deploy.python.uv_lock import uv_lock_requirements
from tako.errors import ConfigError

# Bumped whenever the wheelhouse layout or build rules change, so old cache entries are not reused.
CACHE_FORMAT = "1"
# Not part of a local package's source: left out of its cache key and of the copy it is built from.
SKIP_DIRS = frozenset(
    {".git", "__pycache__", "build", "dist", ".venv", ".tox", ".mypy_cache", ".pytest_cache"}
)


@dataclass(frozen=True)
class Requirements:
    """A project's dependencies as requirements-file text for pip."""

    source: Path  # the file they came from: requirements.txt, uv.lock or pyproject.toml
    text: str  # requirements-file lines (options such as --hash and -r included)
    base_dir: Path  # relative paths in `text` are relative to this directory (the project)

    @property
    def hashed(self) -> bool:
        """True when pip must run in --require-hashes mode (any line carries a hash)."""
        return reqfile.is_hashed(self.text)

    def local_packages(self) -> list[tuple[str, Path]]:
        """(original line, resolved path) for every local-path requirement in the top-level file."""
        return reqfile.local_requirements(self.text, self.base_dir)


def detect_requirements(project_dir: Path) -> Requirements | None:
    """The project's Python dependencies, or None when it has none.

    Order: `requirements.txt` (hashes honoured), then `uv.lock` (exported with its hashes), then
    `pyproject.toml` `[project].dependencies`. An empty list counts as none.
    """
    req_file = project_dir / "requirements.txt"
    if req_file.is_file():
        text = req_file.read_text()
        return Requirements(req_file, text, project_dir) if reqfile.has_requirements(text) else None
    lock = project_dir / "uv.lock"
    if lock.is_file():
        text = uv_lock_requirements(lock)
        return Requirements(lock, text, project_dir) if text.strip() else None
    pyproject = project_dir / "pyproject.toml"
    if pyproject.is_file():
        deps = _pyproject_dependencies(pyproject)
        return Requirements(pyproject, "\n".join(deps) + "\n", project_dir) if deps else None
    return None


def _pyproject_dependencies(pyproject: Path) -> list[str]:
    try:
        data = tomllib.loads(pyproject.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(pyproject), f"invalid TOML: {exc}") from exc
    deps = data.get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ConfigError(str(pyproject), "expected a list of strings", key="project.dependencies")
    return deps


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            file = Path(root) / name
            h.update(str(file.relative_to(path)).encode() + b"\0")
            h.update(file.read_bytes() + b"\0")
    return h.hexdigest()


def requirements_key(reqs: Requirements, target: TargetPython) -> str:
    """Cache key: the requirements (and files or local packages they name) plus the target's tags."""
    h = hashlib.sha256()
    h.update(f"tako-wheelhouse/{CACHE_FORMAT}\n".encode())
    h.update(json.dumps(asdict(target), sort_keys=True).encode() + b"\n")
    h.update(reqs.text.encode() + b"\n")
    for inc in reqfile.included_files(reqs.text, reqs.base_dir):
        h.update(inc.read_bytes() if inc.is_file() else b"<missing>")
    for _line, path in reqs.local_packages():
        h.update(_tree_digest(path).encode() if path.exists() else b"<missing>")
    return h.hexdigest()[:24]
