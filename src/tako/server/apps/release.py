"""A release directory as the runtime sees it: `app.json` (start command, health path) plus `.env`, and
its own pages (`maintenance.html`, `errors/50x.html`)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tako.config import envfile
from tako.config.static_mounts import EXAMPLE, directory_problem, prefix_problem
from tako.errors import ReleaseError
from tako.server.apps.release_pages import NO_PAGES, ReleasePages, read_pages
from tako.server.proxy.static_files import StaticMounts

DEFAULT_HEALTH_CHECK = "/_tako/status"
DATA_DIR = ("shared", "data")  # under the app dir: TAKO_DATA_DIR, kept across releases


@dataclass(frozen=True)
class Release:
    """Everything needed to start instances of one version of an app."""

    app: str
    version: str
    path: Path
    start: str
    health_check: str = DEFAULT_HEALTH_CHECK
    env_name: str = ""  # the deploy environment (app.json "env"), shown in status
    request_buffering: bool = True  # false: the proxy streams request bodies (app.json, from tako.toml)
    compression: bool = True  # false: the proxy never compresses its responses (app.json, from tako.toml)
    https: bool = True  # false: served on the HTTP listener, no certificate for its hosts (app.json)
    env: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # holds secrets
    uid: int | None = None  # the app's own uid when apps are isolated; None: run as tako-server's user
    pages: ReleasePages = field(default=NO_PAGES, compare=False, repr=False)  # maintenance and error pages
    recorded_at: str = ""  # app.json's release.deployed_at (ISO 8601 UTC), "" when not recorded
    # URL prefixes tako-server serves from directories of this release (app.json "static", from tako.toml)
    static: StaticMounts | None = field(default=None, compare=False, repr=False)

    def static_dirs(self) -> dict[str, str]:
        """URL prefix -> absolute directory of each static mount (as data-plane workers receive them)."""
        return dict(self.static.dirs) if self.static is not None else {}


def load_release(app: str, version: str, path: Path, uid: int | None = None) -> Release:
    """Read `app.json` and `.env` of the release at `path`; errors say which file is wrong and why."""
    if not path.is_dir():
        raise ReleaseError(
            f"release directory {path} does not exist",
            hint="the deploy request's path must be the extracted release directory",
        )
    meta_path = path / "app.json"
    try:
        meta: Any = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ReleaseError(f"{meta_path} is missing", hint="every release carries app.json") from exc
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{meta_path} cannot be read: {exc}") from exc
    if not isinstance(meta, dict):
        raise ReleaseError(f"{meta_path}: expected a JSON object")
    start = meta.get("start")
    if not isinstance(start, str) or not start.strip():
        raise ReleaseError(
            f"{meta_path}: no start command", hint='set [tako].start in tako.toml, e.g. "python app.py"'
        )
    health = meta.get("health_check") or DEFAULT_HEALTH_CHECK
    if not isinstance(health, str) or not health.startswith("/"):
        raise ReleaseError(f"{meta_path}: health_check must be a path starting with '/', got {health!r}")
    env_path = path / ".env"
    env: dict[str, str] = {}
    if env_path.exists():
        try:
            env = envfile.parse(env_path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ReleaseError(f"{env_path} cannot be read: {exc}") from exc
        except envfile.EnvFileError as exc:
            raise ReleaseError(f"{env_path}: {exc}") from exc
    env_value = meta.get("env")
    env_name = env_value if isinstance(env_value, str) else ""
    return Release(
        app=app,
        version=version,
        path=path,
        start=start,
        health_check=health,
        env_name=env_name,
        request_buffering=_switch(meta_path, meta, "request_buffering"),
        compression=_switch(meta_path, meta, "compression"),
        https=_switch(meta_path, meta, "https"),
        env=env,
        uid=uid,
        recorded_at=_recorded_at(meta),
        pages=read_pages(path),
        static=_static_mounts(meta_path, meta.get("static"), path),
    )


def _switch(meta_path: Path, meta: dict[str, Any], key: str) -> bool:
    """A true-or-false key of app.json, true when absent (releases made before the option)."""
    value = meta.get(key, True)
    if not isinstance(value, bool):
        raise ReleaseError(f"{meta_path}: {key} must be true or false, got {value!r}")
    return value


def _static_mounts(meta_path: Path, value: Any, release: Path) -> StaticMounts | None:
    """`static` of app.json: each directory must exist inside the release (symlinks resolved)."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ReleaseError(
            f"{meta_path}: static must be an object of URL prefix -> directory, e.g. {EXAMPLE}"
        )
    root = os.path.realpath(release)
    dirs: dict[str, str] = {}
    for prefix, directory in value.items():
        problem = prefix_problem(prefix) or (
            directory_problem(directory) if isinstance(directory, str) else "the directory must be a string"
        )
        if problem is not None:
            raise ReleaseError(f"{meta_path}: static {prefix!r}: {problem}")
        real = os.path.realpath(os.path.join(root, directory))
        if not real.startswith(root + os.sep) or not os.path.isdir(real):
            raise ReleaseError(
                f"{meta_path}: static {prefix!r}: {directory!r} is not a directory inside the release "
                "(the release's own root is not one: it holds app.json and the app's code)",
                hint="create it in the build (or commit it), or fix [tako] static in tako.toml",
            )
        dirs[prefix.rstrip("/")] = real
    return StaticMounts(dirs)


def _recorded_at(meta: dict[str, Any]) -> str:
    """When the deploy that made this release says it ran (tells a rollback from a deploy)."""
    record = meta.get("release")
    when = record.get("deployed_at") if isinstance(record, dict) else None
    return when if isinstance(when, str) else ""


def app_dir_of(release: Release) -> Path | None:
    """The app dir holding `release` (`<app dir>/releases/<version>`), or None for a release elsewhere."""
    releases = release.path.parent
    return releases.parent if releases.name == "releases" else None


def data_dir_of(release: Release) -> Path | None:
    """The app's persistent data dir (TAKO_DATA_DIR), or None for a release outside an app dir."""
    app_dir = app_dir_of(release)
    return app_dir.joinpath(*DATA_DIR) if app_dir is not None else None


def ensure_data_dir(release: Release) -> Path | None:
    """Create the app's data dir if it is missing (never touching what is in it); its path, or None for a
    release outside an app dir. With isolation, `isolation.prepare` then makes it the app's to write."""
    data = data_dir_of(release)
    if data is not None:
        data.mkdir(mode=0o750, parents=True, exist_ok=True)
    return data


def point_current(release: Release) -> bool:
    """Make `<app dir>/current` name `release` (a relative link, replaced atomically); False when the release
    is not in an app dir's `releases/` (then there is no `current` to keep).

    tako-server does this as the last step of a successful rollout, so `current` always names the release it
    runs, even when the CLI that asked for the deploy was interrupted or cut off before its own last step.
    """
    app_dir = app_dir_of(release)
    if app_dir is None:
        return False
    target = f"releases/{release.path.name}"
    current = app_dir / "current"
    if os.path.islink(current) and os.readlink(current) == target:
        return True
    temporary = app_dir / f".current-{secrets.token_hex(4)}"
    os.symlink(target, temporary)
    try:
        os.replace(temporary, current)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return True
