"""Release records: the `release` object a deploy writes, and a server's listing run by a real shell."""

from __future__ import annotations

import io
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console
from tests.support.projects import git, make_project

from tako.cli.releases import releases_json, render_releases
from tako.deploy.commands import LOCK_HELD_STATUS
from tako.deploy.layout import AppLayout
from tako.deploy.lock import lock_holder, stale_own_lock
from tako.deploy.releases import (
    SETTINGS_FILE,
    ReleaseSettings,
    ServerReleases,
    linked_release,
    list_releases,
    lock_and_list,
    parse_listing,
    release_info,
)
from tako.deploy.rollback import choose_version
from tako.errors import DeployError, RemoteError
from tako.remote.connection import ServerAddress
from tako.remote.executor import Command
from tako.remote.fanout import HostResult


def _listing(layout: AppLayout) -> str:
    command = list_releases(layout)
    return subprocess.run(list(command.argv), capture_output=True, text=True, check=True).stdout


def _release(layout: AppLayout, version: str, info: dict[str, str] | None, mtime: int) -> None:
    path = Path(layout.release(version))
    path.mkdir(parents=True)
    meta: dict[str, object] = {"name": "app", "start": "x"}
    if info is not None:
        meta["release"] = info
    (path / "app.json").write_text(json.dumps(meta, indent=2))
    (path / "data.bin").write_bytes(b"x" * 10000)
    os.utime(path, (mtime, mtime))


def test_release_info_names_commit_subject_and_who(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    git(project, "commit", "-q", "--allow-empty", "-m", "Fix the\ttab subject")
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    info = release_info(project, "abc1234", now)
    assert info["commit"] == git(project, "rev-parse", "HEAD")
    assert info["subject"] == "Fix the\ttab subject"
    assert info["deployed_at"] == "2026-01-02T03:04:05.000Z"
    assert "@" in info["deployed_by"] and info["version"] == "abc1234"


def test_release_info_without_git(tmp_path: Path) -> None:
    project = make_project(tmp_path, use_git=False)
    info = release_info(project, "nogit_1")
    assert info["commit"] == "" and info["subject"] == ""


def test_listing_newest_first_with_sizes_metadata_and_old_releases(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    first = {
        "deployed_at": "2026-01-01T00:00:00Z",
        "deployed_by": "me@laptop",
        "commit": "a" * 40,
        "subject": "first\nline",
    }
    second = {"deployed_at": "2026-01-03T00:00:00Z", "deployed_by": "you@desk", "commit": "", "subject": ""}
    _release(layout, "v1", first, 2_000_000_000)  # touched later (e.g. a secrets sync): order by record
    _release(layout, "v2", second, 1_700_000_000)
    _release(layout, "old", None, 1_600_000_000)  # made before releases were recorded: its mtime
    Path(layout.releases, ".partial-v3-n1").mkdir()  # staging never lists
    entries = parse_listing(_listing(layout))
    assert [e.version for e in entries] == ["v2", "v1", "old"]
    v2, v1, old = entries
    assert v1.commit == "a" * 40 and v1.subject == "first\nline" and v1.deployed_by == "me@laptop"
    assert v1.describe_commit() == "aaaaaaa first\nline" and v2.describe_commit() == "no git"
    assert old.deployed_at == "2020-09-13T12:26:40Z" and old.deployed_by == ""
    assert all(e.size >= 10000 for e in entries)


def test_listing_of_an_app_never_deployed_is_empty(tmp_path: Path) -> None:
    assert parse_listing(_listing(AppLayout("nope", root=str(tmp_path)))) == []


def test_previous_is_the_release_deployed_before_the_live_one() -> None:
    layout_free = parse_listing("v3\t4\t3\t{}\nv2\t4\t2\t{}\nv1\t4\t1\t{}\n")
    assert [e.version for e in layout_free] == ["v3", "v2", "v1"]
    assert ServerReleases(tuple(layout_free), "v3").previous() == "v2"
    assert ServerReleases(tuple(layout_free), "v2").previous() == "v1"
    assert ServerReleases(tuple(layout_free), "v1").previous() is None
    assert ServerReleases(tuple(layout_free), None).previous() is None


def _kept(*versions: str, live: str | None) -> ServerReleases:
    listing = "".join(f"{v}\t4\t{100 - i}\t{{}}\n" for i, v in enumerate(versions))
    return ServerReleases(tuple(parse_listing(listing)), live)


def test_rollback_goes_to_the_release_before_the_live_one_or_the_one_named() -> None:
    found = _kept("v3", "v2", "v1", live="v2")
    assert choose_version("app", found, None) == "v1"
    assert choose_version("app", found, "v3") == "v3"


@pytest.mark.parametrize(
    ("found", "wanted", "message", "hint"),
    [
        (_kept("v2", "v1", live="v2"), "v9", "does not have release v9 (it keeps: v2, v1)", "tako releases"),
        (_kept("v2", "v1", live="v1"), None, "no release before the live one (v1)", "tako rollback v2"),
        (_kept("v1", live="v1"), None, "no release before the live one (v1)", "tako deploy"),
        (_kept("v1", live=None), None, "app is not running on this server", "tako deploy"),
    ],
)
def test_a_rollback_that_cannot_be_done_says_why_and_what_the_server_has(
    found: ServerReleases, wanted: str | None, message: str, hint: str
) -> None:
    with pytest.raises(DeployError) as info:
        choose_version("app", found, wanted)
    assert message in info.value.message and info.value.hint and hint in info.value.hint


def test_the_listing_names_servers_that_disagree_and_those_it_cannot_reach() -> None:
    a, b, c = (ServerAddress(name, f"10.0.0.{i}") for i, name in enumerate(("a", "b", "c"), 1))
    results = [
        HostResult(a, value=_kept("v2", "v1", live="v2")),
        HostResult(b, value=_kept("v1", live="v1")),
        HostResult(c, error=RemoteError("c: connection refused")),
    ]
    console = Console(file=io.StringIO(), width=200, no_color=True)
    render_releases(console, "app", results)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "a: app, live v2, 2 release(s) kept" in text and "  * v2 " in text and "    v1 " in text
    assert "✗ c: c: connection refused" not in text and "✗ c: connection refused" in text
    assert "servers disagree on the live release: a runs v2, b runs v1" in text
    doc = releases_json(results)
    assert [s["live"] for s in doc] == ["v2", "v1", None]
    assert doc[2]["reachable"] is False and doc[2]["releases"] == []
    assert [r["live"] for r in doc[0]["releases"]] == [True, False]


def test_a_rollback_lock_left_by_a_dead_process_of_ours_is_stale_like_a_deploys() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = lock_holder("v1", "rolling back to").replace(f" pid {os.getpid()} ", f" pid {gone.pid} ")
    assert " rolling back to v1 since " in holder
    assert stale_own_lock(holder)
    assert not stale_own_lock(lock_holder("v1", "rolling back to"))  # this very process: alive


def _run(command: Command) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command.argv), capture_output=True, text=True, check=False)


def test_a_rollback_takes_the_lock_and_lists_in_one_command(tmp_path: Path) -> None:
    layout = AppLayout("app", root=str(tmp_path))
    _release(layout, "v1", {"deployed_at": "2026-01-01T00:00:00Z"}, 1_700_000_000)
    _release(layout, "v2", {"deployed_at": "2026-01-02T00:00:00Z"}, 1_700_000_000)
    settings = ReleaseSettings(("a.test", "b.test/api/*"), 3, 60)
    Path(layout.release("v1"), SETTINGS_FILE).write_text(settings.as_json() + "\n")
    os.symlink("releases/v2", layout.current)
    mine = lock_holder("v1", "rolling back to")

    taken = _run(lock_and_list(layout, mine))
    assert taken.returncode == 0, taken.stderr
    assert Path(layout.lock, "holder").read_text() == mine + "\n"
    assert linked_release(taken.stdout) == "v2"
    v2, v1 = parse_listing(taken.stdout)
    assert (v2.version, v2.settings) == ("v2", None)  # deployed before settings were recorded
    assert (v1.version, v1.settings) == ("v1", settings)

    held = _run(lock_and_list(layout, "someone else"))
    assert held.returncode == LOCK_HELD_STATUS and held.stdout.strip() == mine  # the holder, no listing


def test_release_settings_that_cannot_be_read_are_none() -> None:
    assert ReleaseSettings.parse("") is None
    assert ReleaseSettings.parse("{not json") is None
    assert ReleaseSettings.parse('{"routes": "a.test", "instances": 1, "idle_timeout": 5}') is None
    assert ReleaseSettings.parse('{"routes": ["a.test"], "instances": 1, "idle_timeout": 5}') == (
        ReleaseSettings(("a.test",), 1, 5)
    )
