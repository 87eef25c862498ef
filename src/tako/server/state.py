"""tako-server's persistent state: `<data_dir>/tako.db` (sqlite, WAL), with numbered migrations.

It holds what must survive a restart: each app's version, release path, routes and settings, its
maintenance mode, the uid each app runs as, and the running instances (pid and start time, port,
release version), which the next tako-server adopts: instances outlive tako-server, also its SIGKILL.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tako.errors import StateError

DB_NAME = "tako.db"

# Migration N (1-based) brings the schema from user_version N-1 to N. Never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        routes TEXT NOT NULL,
        instances INTEGER NOT NULL,
        idle_timeout INTEGER NOT NULL,
        stopped INTEGER NOT NULL DEFAULT 0,
        deployed_at TEXT NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE processes (
        instance TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        pid INTEGER NOT NULL,
        create_time REAL NOT NULL
    );
    """,
    # The uid (and gid) each app's instances run as when apps are isolated. Kept when an app is deleted,
    # so a uid is never handed to a second app that could then read files the first one left behind.
    """
    CREATE TABLE app_uids (
        app TEXT PRIMARY KEY,
        uid INTEGER NOT NULL UNIQUE
    );
    """,
    # What adopting a running instance needs besides its pid: the port it serves on and the release it
    # runs. Rows written before (port 0, no version) are never adopted: their instances are stopped.
    """
    ALTER TABLE processes ADD COLUMN port INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE processes ADD COLUMN version TEXT NOT NULL DEFAULT '';
    """,
    # Maintenance mode per app (on, its message, the clients let through), so it survives a restart. A
    # table of its own: an app without a row is not in maintenance and lets nobody through.
    """
    CREATE TABLE app_maintenance (
        app TEXT PRIMARY KEY,
        enabled INTEGER NOT NULL,
        message TEXT NOT NULL,
        allow TEXT NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class AppRecord:
    name: str
    version: str
    path: str
    routes: tuple[str, ...]
    instances: int
    idle_timeout: int
    stopped: bool
    deployed_at: str
    last_error: str = ""


@dataclass(frozen=True)
class MaintenanceRecord:
    app: str
    on: bool
    message: str
    allow: tuple[str, ...]


@dataclass(frozen=True)
class ProcessRecord:
    instance: str
    app: str
    pid: int
    create_time: float  # process start time (clock ticks since boot), to recognise a recycled pid
    port: int = 0  # 0: recorded by a tako-server that did not adopt instances
    version: str = ""


class StateStore:
    """Small synchronous sqlite store; each write is its own transaction (they are rare and tiny)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot open the state database {path}: {exc}",
                hint="check that the data dir is writable by the user tako-server runs as",
            ) from exc

    @property
    def schema_version(self) -> int:
        row = self._db.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StateError(
                f"{self.path} was written by a newer tako-server (schema {current}, this one knows "
                f"{len(MIGRATIONS)})",
                hint="upgrade tako-server",
            )
        for number in range(current + 1, len(MIGRATIONS) + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the state database {self.path}: {exc}") from exc

    def load_apps(self) -> list[AppRecord]:
        rows = self._db.execute(
            "SELECT name, version, path, routes, instances, idle_timeout, stopped, deployed_at, last_error "
            "FROM apps ORDER BY name"
        ).fetchall()
        return [
            AppRecord(
                name=r[0],
                version=r[1],
                path=r[2],
                routes=tuple(json.loads(r[3])),
                instances=int(r[4]),
                idle_timeout=int(r[5]),
                stopped=bool(r[6]),
                deployed_at=r[7],
                last_error=r[8],
            )
            for r in rows
        ]

    def save_app(self, rec: AppRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO apps (name, version, path, routes, instances, idle_timeout, stopped, "
            "deployed_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.name,
                rec.version,
                rec.path,
                json.dumps(list(rec.routes)),
                rec.instances,
                rec.idle_timeout,
                int(rec.stopped),
                rec.deployed_at,
                rec.last_error,
            ),
        )

    def delete_app(self, name: str) -> None:
        self._write("DELETE FROM apps WHERE name = ?", (name,))
        self._write("DELETE FROM app_maintenance WHERE app = ?", (name,))

    def save_maintenance(self, rec: MaintenanceRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO app_maintenance (app, enabled, message, allow) VALUES (?, ?, ?, ?)",
            (rec.app, int(rec.on), rec.message, json.dumps(list(rec.allow))),
        )

    def load_maintenance(self) -> dict[str, MaintenanceRecord]:
        rows = self._db.execute("SELECT app, enabled, message, allow FROM app_maintenance").fetchall()
        return {r[0]: MaintenanceRecord(r[0], bool(r[1]), r[2], tuple(json.loads(r[3]))) for r in rows}

    def record_process(self, rec: ProcessRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO processes (instance, app, pid, create_time, port, version) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (rec.instance, rec.app, rec.pid, rec.create_time, rec.port, rec.version),
        )

    def forget_process(self, instance: str) -> None:
        self._write("DELETE FROM processes WHERE instance = ?", (instance,))

    def processes(self) -> list[ProcessRecord]:
        rows = self._db.execute(
            "SELECT instance, app, pid, create_time, port, version FROM processes"
        ).fetchall()
        return [ProcessRecord(r[0], r[1], int(r[2]), float(r[3]), int(r[4]), r[5]) for r in rows]

    def app_uid(self, app: str, first: int, count: int) -> int:
        """The uid of `app`, allocated from [first, first + count) on first use. The caller still checks
        the returned value: this file is writable by tako-server's user, so a row may have been edited."""
        row = self._db.execute("SELECT uid FROM app_uids WHERE app = ?", (app,)).fetchone()
        if row is not None:
            return int(row[0])
        top = self._db.execute(
            "SELECT MAX(uid) FROM app_uids WHERE uid >= ? AND uid < ?", (first, first + count)
        ).fetchone()[0]
        uid = first if top is None else int(top) + 1
        if uid >= first + count:
            raise StateError(f"no free app uid left in {first}..{first + count - 1}")
        self._write("INSERT INTO app_uids (app, uid) VALUES (?, ?)", (app, uid))
        return uid

    def close(self) -> None:
        self._db.close()
