"""Releases as objects: what a deploy records about itself, and what each server keeps.

A deploy writes a `release` object into the release's `app.json` (version, when, by whom, the git commit
and subject), and on each server the routes and instance counts it was deployed with (`SETTINGS_FILE`),
which a rollback restores. A server's releases are listed in one command (`releases/*`: name, size, those
two files); which one is live comes from tako-server, which owns that answer.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tako.config.project import DEFAULT_IDLE_TIMEOUT
from tako.deploy.archive import run_git, uses_git
from tako.deploy.commands import TAKE_LOCK
from tako.deploy.layout import AppLayout
from tako.errors import ServerError
from tako.protocol import ERROR_UNKNOWN_APP, Reply, Status
from tako.remote.executor import Command, Executor, sh

RELEASE_KEY = "release"  # the object in app.json
SETTINGS_FILE = ".tako-settings.json"  # in a release on a server: the routes and scaling it was deployed with

# One line per release: name, KiB used (du, the shared virtualenv not counted), mtime, then its app.json
# and its settings, each flattened to one line (JSON never holds a raw newline inside a string).
_LIST = """
cd "$1" 2>/dev/null || exit 0
for d in * ; do
  [ -d "$d" ] && [ ! -L "$d" ] || continue
  printf '%s\\t%s\\t%s\\t' "$d" "$(du -sk "$d" 2>/dev/null | cut -f1)" "$(stat -c %Y "$d")"
  tr '\\n\\t' '  ' < "$d/app.json" 2>/dev/null
  printf '\\t'
  tr '\\n\\t' '  ' < "$d/.tako-settings.json" 2>/dev/null
  echo
done
"""

# A rollback's lock and listing in one round trip ($1 app dir, $2 lock, $3 holder, $4 releases dir): once
# the lock is held, the release `current` names (a line `current<TAB>target`), then the listing.
_LOCK_AND_LIST = (
    TAKE_LOCK
    + '(\n  printf \'current\\t%s\\n\' "$(readlink "$1/current")"\n  set -- "$4"\n'
    + _LIST
    + ")\nexit 0\n"
)


@dataclass(frozen=True)
class ReleaseSettings:
    """What a release was deployed with on a server, besides its files: a rollback restores them."""

    routes: tuple[str, ...]
    instances: int
    idle_timeout: int

    def as_json(self) -> str:
        return json.dumps(
            {"routes": list(self.routes), "instances": self.instances, "idle_timeout": self.idle_timeout}
        )

    @classmethod
    def parse(cls, text: str) -> ReleaseSettings | None:
        """None for a release deployed before Tako recorded them (or an unreadable file)."""
        try:
            data = json.loads(text) if text.strip() else {}
            routes, instances, idle = data["routes"], data["instances"], data["idle_timeout"]
        except (ValueError, TypeError, KeyError):
            return None
        if not (isinstance(routes, list) and isinstance(instances, int) and isinstance(idle, int)):
            return None
        return cls(tuple(str(r) for r in routes), instances, idle)


@dataclass(frozen=True)
class ReleaseEntry:
    """One release kept on a server."""

    version: str
    size: int  # bytes of the release directory on the server
    deployed_at: str  # ISO 8601 UTC; the directory's mtime for releases made before Tako recorded it
    deployed_by: str = ""  # user@host
    commit: str = ""  # empty: the project was not in git
    subject: str = ""
    settings: ReleaseSettings | None = None  # None: deployed before Tako recorded them

    def describe_commit(self) -> str:
        return f"{self.commit[:7]} {self.subject}".strip() if self.commit else "no git"

    def as_json(self, live: bool) -> dict[str, Any]:
        return {
            "version": self.version,
            "deployed_at": self.deployed_at,
            "deployed_by": self.deployed_by or None,
            "commit": self.commit or None,
            "subject": self.subject or None,
            "size": self.size,
            "live": live,
        }


@dataclass(frozen=True)
class ServerReleases:
    """A server's kept releases, newest first, and the one tako-server runs (None: the app is not running
    there)."""

    releases: tuple[ReleaseEntry, ...]
    live: str | None
    routes: tuple[str, ...] = ()
    instances: int = 0
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT

    def versions(self) -> list[str]:
        return [r.version for r in self.releases]

    def entry(self, version: str) -> ReleaseEntry | None:
        return next((r for r in self.releases if r.version == version), None)

    def previous(self) -> str | None:
        """The release deployed before the live one, if kept."""
        names = self.versions()
        if self.live not in names:
            return None
        index = names.index(self.live) + 1
        return names[index] if index < len(names) else None


def release_info(project_dir: Path, version: str, now: datetime | None = None) -> dict[str, str]:
    """The `release` object of app.json: who deploys which commit, when."""
    # Milliseconds: two deploys within a second still list in the order they were made.
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    info = {
        "version": version,
        "deployed_at": when,
        "deployed_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "commit": "",
        "subject": "",
    }
    if uses_git(project_dir):
        result = run_git(project_dir, "log", "-1", "--format=%H%n%s", "HEAD")
        lines = result.stdout.decode(errors="replace").splitlines() if result.returncode == 0 else []
        if lines:
            info["commit"] = lines[0].strip()
            info["subject"] = lines[1].strip() if len(lines) > 1 else ""
    return info


def list_releases(layout: AppLayout) -> Command:
    return sh(_LIST, layout.releases)


def lock_and_list(layout: AppLayout, holder: str) -> Command:
    """Take the deploy lock (`commands.TAKE_LOCK`'s exit statuses) and, once held, list the releases."""
    return sh(_LOCK_AND_LIST, layout.app_dir, layout.lock, holder, layout.releases)


def linked_release(output: str) -> str | None:
    """The release `current` names, from `lock_and_list` output (None: no link)."""
    for line in output.splitlines():
        if line.startswith("current\t"):
            return line.split("\t", 1)[1].strip().removeprefix("releases/") or None
    return None


def parse_listing(output: str) -> list[ReleaseEntry]:
    """The releases of `list_releases` output, newest deploy first."""
    entries = []
    for line in output.splitlines():
        fields = [*line.split("\t", 4), "", ""]
        if len(fields) < 5 or not fields[0] or not fields[2]:
            continue  # not a release line (e.g. the `current` line of a rollback's listing)
        name, kib, mtime = fields[0], fields[1], fields[2]
        info = _release_object(fields[3])
        fallback = _iso(mtime)
        entries.append(
            ReleaseEntry(
                version=name,
                size=int(kib) * 1024 if kib.isdigit() else 0,
                deployed_at=_text(info.get("deployed_at")) or fallback,
                deployed_by=_text(info.get("deployed_by")),
                commit=_text(info.get("commit")),
                subject=_text(info.get("subject")),
                settings=ReleaseSettings.parse(fields[4]),
            )
        )
    return sorted(entries, key=lambda e: (e.deployed_at, e.version), reverse=True)


def _release_object(app_json: str) -> dict[str, Any]:
    try:
        meta = json.loads(app_json) if app_json.strip() else {}
    except ValueError:
        return {}
    found = meta.get(RELEASE_KEY) if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _iso(mtime: str) -> str:
    try:
        return datetime.fromtimestamp(int(mtime), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return ""


async def server_releases(ex: Executor, app: str, root: str | None = None) -> ServerReleases:
    """One server's releases and its live one: the listing and tako-server's `status`, at once."""
    layout = AppLayout(app) if root is None else AppLayout(app, root)
    listing, status = await asyncio.gather(
        ex.run(list_releases(layout), what="list releases"), ex.control(Status(app=app))
    )
    return with_live(parse_listing(listing.stdout), status)


def with_live(listing: list[ReleaseEntry], status: Reply) -> ServerReleases:
    """A server's releases with what tako-server's answer to `status` says is live."""
    entries = tuple(listing)
    if not status.ok:
        if status.extra.get("code") == ERROR_UNKNOWN_APP:
            return ServerReleases(entries, None)
        raise ServerError(f"tako-server refused `status`: {status.message}")
    data = status.data if isinstance(status.data, dict) else {}
    return ServerReleases(
        entries,
        _text(data.get("version")) or None,
        routes=tuple(str(r) for r in data.get("routes") or ()),
        instances=int(data.get("min_instances") or 0),
        idle_timeout=int(data.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)),
    )
