"""Pure pieces of the app runtime: health policy, log lines and rotation, release loading, state store."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tako.config import envfile
from tako.errors import ReleaseError, StateError
from tako.server.apps.health import HealthTracker, Verdict
from tako.server.apps.logs import AppLog, LineSplitter
from tako.server.apps.release import ensure_data_dir, load_release
from tako.server.apps.spawner import instance_env, wait_exit
from tako.server.state import MIGRATIONS, AppRecord, ProcessRecord, StateStore


def test_health_policy_two_failures_out_five_dead_one_success_back() -> None:
    t = HealthTracker()
    assert t.record(False) is Verdict.FAILING
    assert t.record(False) is Verdict.OUT
    assert t.record(True) is Verdict.OK
    verdicts = [t.record(False) for _ in range(5)]
    assert verdicts == [Verdict.FAILING, Verdict.OUT, Verdict.OUT, Verdict.OUT, Verdict.DEAD]


def test_line_splitter_keeps_partial_lines() -> None:
    s = LineSplitter()
    assert s.feed(b"one\ntw") == [b"one"]
    assert s.feed(b"o\r\nthree\n") == [b"two", b"three"]
    assert s.feed(b"four") == []
    assert s.flush() == [b"four"]
    assert s.flush() == []


def test_app_log_tail_reads_the_last_lines_of_one_prefix(tmp_path: Path) -> None:
    log = AppLog(tmp_path, max_bytes=0, backups=0)
    for n in range(5):
        log.write("abc", [f"line {n}".encode()])
        log.write("other", [f"noise {n}".encode()])
    assert log.tail("abc", 2) == ["line 3", "line 4"]
    assert AppLog(tmp_path / "none", max_bytes=0, backups=0).tail("abc", 2) == []


def test_two_writers_of_one_log_rotate_it_once_and_follow_each_other(tmp_path: Path) -> None:
    """The server and an instance's relay share app.log: neither loses lines to the other's rotation,
    and a rotation is never repeated on the file the other writer just started."""
    one = AppLog(tmp_path, max_bytes=200, backups=5)
    two = AppLog(tmp_path, max_bytes=200, backups=5)
    for n in range(40):
        (one if n % 2 else two).write("w", [f"line {n:02}".encode()])
    one.close()
    two.close()
    files = sorted(tmp_path.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix != ".log" else 0)
    lines = [line for p in files for line in p.read_text().splitlines()]
    assert lines == [f"[w] line {n:02}" for n in range(40)][-len(lines) :]
    assert len(lines) >= 30  # five backups of ~200 bytes keep at least 30 of these 14-byte lines
    assert all(p.stat().st_size < 250 for p in tmp_path.iterdir())


def test_app_log_prefixes_and_rotates(tmp_path: Path) -> None:
    log = AppLog(tmp_path, max_bytes=100, backups=2)
    for n in range(30):
        log.write("abc", [f"line {n}".encode()])
    log.event("hello")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["app.log", "app.log.1", "app.log.2"]
    rotated = (tmp_path / "app.log.1").read_text().splitlines()
    assert all(line.startswith("[abc] line ") for line in rotated)
    assert (tmp_path / "app.log").read_text().splitlines()[-1] == "[tako] hello"
    assert all(p.stat().st_size < 200 for p in tmp_path.iterdir())


def _release(tmp_path: Path, meta: object, env: str | None = None) -> Path:
    (tmp_path / "app.json").write_text(json.dumps(meta))
    if env is not None:
        (tmp_path / ".env").write_text(env)
    return tmp_path


def test_load_release_reads_app_json_and_env(tmp_path: Path) -> None:
    path = _release(
        tmp_path, {"start": "python app.py"}, envfile.render({"A": 'x "y" $z', "TAKO_BUILD": "v1"})
    )
    rel = load_release("web", "v1", path)
    assert rel.start == "python app.py"
    assert rel.health_check == "/_tako/status"
    assert rel.request_buffering is True  # releases made before the option buffer too
    assert rel.compression is True  # and compress
    assert rel.https is True  # and are served over HTTPS
    assert load_release("web", "v1", _release(tmp_path, {"start": "x", "https": False})).https is False
    assert (
        load_release("web", "v1", _release(tmp_path, {"start": "x", "compression": False})).compression
        is False
    )
    assert (
        load_release(
            "web", "v1", _release(tmp_path, {"start": "x", "request_buffering": False})
        ).request_buffering
        is False
    )
    assert rel.env == {"A": 'x "y" $z', "TAKO_BUILD": "v1"}


@pytest.mark.parametrize(
    ("meta", "env", "needle"),
    [
        ({}, None, "no start command"),
        ({"start": "x", "health_check": "status"}, None, "health_check"),
        ([1], None, "expected a JSON object"),
        ({"start": "x", "request_buffering": "no"}, None, "request_buffering must be true or false"),
        ({"start": "x", "compression": 1}, None, "compression must be true or false"),
        ({"start": "x", "https": "no"}, None, "https must be true or false"),
        ({"start": "x"}, 'A="unterminated\n', "line 1"),
    ],
)
def test_load_release_errors_name_the_file(
    tmp_path: Path, meta: object, env: str | None, needle: str
) -> None:
    path = _release(tmp_path, meta, env)
    with pytest.raises(ReleaseError) as err:
        load_release("web", "v1", path)
    assert needle in err.value.message
    assert str(tmp_path) in err.value.message


def test_load_release_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="does not exist"):
        load_release("web", "v1", tmp_path / "nope")


def test_instance_env_is_minimal_and_tako_wins(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    path = _release(tmp_path, {"start": "x"}, envfile.render({"PORT": "1", "SECRET": "s", "HOST": "0.0.0.0"}))
    env = instance_env(load_release("web", "v1", path), 4000, "i1")
    assert env["PORT"] == "4000" and env["HOST"] == "127.0.0.1"
    assert env["TAKO_APP"] == "web" and env["TAKO_INSTANCE"] == "i1"
    assert env["SECRET"] == "s"
    assert env["PATH"].startswith(str(tmp_path / ".venv" / "bin") + ":")
    assert env["VIRTUAL_ENV"] == str(tmp_path / ".venv")
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "VIRTUAL_ENV",
        "SECRET",
        "PORT",
        "HOST",
        "TAKO_APP",
        "TAKO_INSTANCE",
    }


def test_a_release_of_an_app_dir_gets_its_persistent_data_dir(tmp_path: Path) -> None:
    app_dir = tmp_path / "apps" / "web"
    (app_dir / "releases").mkdir(parents=True)
    (app_dir / "releases" / "v1").mkdir()
    release = load_release("web", "v1", _release(app_dir / "releases" / "v1", {"start": "x"}))
    data = app_dir / "shared" / "data"
    assert ensure_data_dir(release) == data and data.is_dir()
    (data / "kept.txt").write_text("kept")
    assert ensure_data_dir(release) == data and (data / "kept.txt").read_text() == "kept"
    assert instance_env(release, 4000, "i1")["TAKO_DATA_DIR"] == str(data)


def test_a_release_outside_an_app_dir_has_no_data_dir(tmp_path: Path) -> None:
    release = load_release("web", "v1", _release(tmp_path, {"start": "x"}, None))
    assert ensure_data_dir(release) is None
    assert "TAKO_DATA_DIR" not in instance_env(release, 4000, "i1")


def test_state_store_roundtrip_wal_and_migrations(tmp_path: Path) -> None:
    db = tmp_path / "tako.db"
    store = StateStore(db)
    assert store.schema_version == len(MIGRATIONS)
    rec = AppRecord("web", "v1", "/p", ("a.test", "b.test/api/*"), 2, 300, False, "2026-01-01T00:00:00+00:00")
    store.save_app(rec)
    store.save_app(
        AppRecord("api", "v9", "/q", ("c.test",), 0, 60, True, "2026-01-02T00:00:00+00:00", "boom")
    )
    store.record_process(ProcessRecord("i1", "web", 123, 1.5))
    store.close()
    again = StateStore(db)
    assert [a.name for a in again.load_apps()] == ["api", "web"]
    assert again.load_apps()[1] == rec
    assert again.load_apps()[0].stopped and again.load_apps()[0].last_error == "boom"
    assert again.processes() == [ProcessRecord("i1", "web", 123, 1.5)]
    again.delete_app("web")
    again.forget_process("i1")
    assert [a.name for a in again.load_apps()] == ["api"] and again.processes() == []
    again.close()
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_state_store_refuses_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "tako.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="newer tako-server"):
        StateStore(db)


async def _wait_for_a_real_exit() -> None:
    proc = subprocess.Popen(["sleep", "60"])  # not this process's child once adopted: no wait() here
    try:
        waiting = asyncio.ensure_future(wait_exit(proc.pid))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # still running: nothing to report yet
        proc.kill()
        assert await asyncio.wait_for(waiting, 30) is True
    finally:
        proc.kill()
        proc.wait()
    assert await wait_exit(proc.pid) is False  # gone already


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd-kernel"])
def test_wait_exit_returns_when_the_process_exits(pidfd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adopted instance is not tako-server's child: its exit is awaited with a pidfd, or, on a kernel
    without pidfd_open, by watching /proc (never taken as "exited" at once)."""
    if not pidfd:

        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    asyncio.run(_wait_for_a_real_exit())
