"""The app registry: every deployed app, the commands that change them, persistence, and the routing
snapshot published to the proxy on every route or instance change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tako.config.server import AppSettings
from tako.errors import AppError, InstanceFailed, IsolationError, ReleaseError, TakoError, UnknownApp
from tako.protocol import Deploy, Maintenance
from tako.routing import RouteError, RouteTable, find_conflicts, parse_route
from tako.server.apps import health, isolation, rollout
from tako.server.apps.app import AppState, ManagedApp
from tako.server.apps.events import AppEvents
from tako.server.apps.instance import LIVE
from tako.server.apps.logs import AppLog
from tako.server.apps.maintenance import MaintenanceSetting
from tako.server.apps.release import Release, ensure_data_dir, load_release, point_current
from tako.server.apps.spawner import group_members, is_leader, kill_group, proc_stat, signal_group, wait_exit
from tako.server.proxy.backend import AppGate, Snapshot
from tako.server.state import AppRecord, MaintenanceRecord, ProcessRecord, StateStore

log = logging.getLogger("tako.server.apps")

_APP_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}\Z")


class AppRouter:
    """The proxy's `Router`: a route table from patterns to apps. Immutable; rebuilt on route changes."""

    __slots__ = ("_table", "match", "same_for_every_path")

    def __init__(self, table: RouteTable[ManagedApp]) -> None:
        self._table = table
        # The table's own method, called by the proxy for every request: no Python frame of ours around it.
        self.match: Callable[[str, str], AppGate | None] = table.match
        self.same_for_every_path: Callable[[str], bool] = table.same_for_every_path

    def is_routed_host(self, host: str) -> bool:
        return self._table.is_routed_host(host)

    def hosts(self) -> set[str]:
        return self._table.hosts()


class AppRegistry:
    """Owns the apps. Control handlers call one method each; the daemon calls restore/close."""

    def __init__(
        self,
        data_dir: Path,
        settings: AppSettings,
        store: StateStore,
        publish: Callable[[Snapshot], None] = lambda s: None,
        on_hosts_changed: Callable[[set[str]], None] = lambda hosts: None,
        isolated: isolation.Isolation = isolation.OFF,
    ) -> None:
        self.data_dir = data_dir
        self.isolation = isolated
        self.settings = settings
        self.store = store
        self._publish = publish
        self._on_hosts_changed = on_hosts_changed
        self.apps: dict[str, ManagedApp] = {}
        self.events: dict[str, AppEvents] = {}  # per app name, kept across redeploys (/metrics)
        self.ports: set[int] = set()
        self.router = AppRouter(RouteTable(()))
        self.snapshot = Snapshot(router=self.router)
        self._recorded: dict[str, str] = {}  # instance id -> app, as stored
        self._left_over: set[asyncio.Task[None]] = set()  # stopping instances a previous server left
        self._commit = asyncio.Lock()
        # Awaited after a change the reply promises is in force: by default nothing to wait for; with data-
        # plane workers, until each of them applied the latest routing snapshot (WorkerPool.applied).
        self.settled: Callable[[], Awaitable[None]] = _nothing_to_wait_for

    def set_publisher(self, publish: Callable[[Snapshot], None]) -> None:
        self._publish = publish
        publish(self.snapshot)

    # -- lookups ----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ManagedApp]:
        return iter(list(self.apps.values()))

    def get(self, name: str) -> ManagedApp:
        app = self.apps.get(name)
        if app is None:
            known = ", ".join(sorted(self.apps)) or "none"
            raise UnknownApp(f"unknown app {name!r} (deployed apps: {known})")
        return app

    def status(self, name: str) -> dict[str, object]:
        return self.get(name).status()

    def list_apps(self) -> list[dict[str, object]]:
        return [self.apps[n].status() for n in sorted(self.apps)]

    def routes(self) -> dict[str, list[str]]:
        return {n: list(self.apps[n].routes) for n in sorted(self.apps)}

    # -- routing snapshot -------------------------------------------------------------------------------
    def _rebuild_routes(self) -> None:
        entries = [(parse_route(r), app) for app in self.apps.values() for r in app.routes]
        self.router = AppRouter(RouteTable(entries))
        # Certificates only for hosts an app serves over HTTPS ([tako] https = false asks for none).
        self._on_hosts_changed(RouteTable((p, a) for p, a in entries if a.https).hosts())
        self._changed(None)

    def _changed(self, app: ManagedApp | None) -> None:
        """Any route or instance change: publish a fresh snapshot and track instance processes."""
        self.snapshot = Snapshot(router=self.router)
        self._publish(self.snapshot)
        if app is not None:
            self._sync_processes(app)

    def _sync_processes(self, app: ManagedApp) -> None:
        """Keep the store's record of this app's live instances: what the next tako-server adopts."""
        live = {i.id: i for i in app.instances if i.pid is not None and i.state in LIVE}
        for inst_id, inst in live.items():
            st = proc_stat(inst.pid) if inst_id not in self._recorded and inst.pid is not None else None
            if st is not None and inst.pid is not None:
                self.store.record_process(
                    ProcessRecord(
                        inst_id, app.name, inst.pid, float(st.start_ticks), inst.port, inst.release.version
                    )
                )
                self._recorded[inst_id] = app.name
        for inst_id, owner in list(self._recorded.items()):
            if owner == app.name and inst_id not in live:
                self.store.forget_process(inst_id)
                del self._recorded[inst_id]

    # -- building apps ----------------------------------------------------------------------------------
    async def _load(self, name: str, version: str, path: Path) -> Release:
        """The release at `path`, its app's data dir made; with isolation, run as the app's uid, its files
        prepared for that uid."""
        release = load_release(name, version, path)
        try:
            ensure_data_dir(release)
        except OSError as exc:
            raise ReleaseError(
                f"cannot create the data dir of {name}: {exc}",
                hint="tako-server must be able to write the app dir; check its owner with `ls -ld`",
            ) from exc
        if not self.isolation.enabled:
            return release
        app_dir = self.data_dir / "apps" / name
        isolation.check_release_path(app_dir, path)
        uid = isolation.check_uid(self.store.app_uid(name, isolation.UID_FIRST, isolation.UID_COUNT))
        try:
            await asyncio.to_thread(isolation.prepare, app_dir, path, uid)
        except OSError as exc:
            raise IsolationError(
                f"cannot give the files of {name} to its uid {uid}: {exc}",
                hint="tako-server needs CAP_CHOWN; see docs/server.md, 'Threat model and app isolation'",
            ) from exc
        return replace(release, uid=uid)

    def _make_app(
        self,
        release: Release,
        routes: tuple[str, ...],
        instances: int,
        idle_timeout: int,
        deployed_at: datetime | None = None,
    ) -> ManagedApp:
        log_file = AppLog(
            self.data_dir / "apps" / release.app / "shared" / "logs",
            max_bytes=self.settings.log_max_bytes,
            backups=self.settings.log_backups,
        )
        return ManagedApp(
            release,
            routes=routes,
            min_instances=instances,
            idle_timeout=idle_timeout,
            settings=self.settings,
            log_file=log_file,
            ports=self.ports,
            changed=self._changed,
            deployed_at=deployed_at,
            events=self.events.setdefault(release.app, AppEvents()),
        )

    def _save(self, app: ManagedApp) -> None:
        self.store.save_app(
            AppRecord(
                name=app.name,
                version=app.release.version,
                path=str(app.release.path),
                routes=app.routes,
                instances=app.min_instances,
                idle_timeout=app.idle_timeout,
                stopped=app.stopped,
                deployed_at=app.deployed_at.isoformat(),
                last_error=app.last_error,
            )
        )

    def _check_routes(self, name: str, routes: tuple[str, ...]) -> None:
        if not routes:
            raise AppError(f"deploy of {name!r} has no routes", hint="set route or routes in tako.toml")
        try:
            for r in routes:
                parse_route(r)
            conflicts = find_conflicts(name, routes, self.routes())
        except RouteError as exc:
            raise AppError(str(exc)) from exc
        if conflicts:
            raise AppError(
                "; ".join(c.describe() for c in conflicts),
                hint="each route can belong to one app per server: change the route or delete the other app",
            )

    # -- commands ---------------------------------------------------------------------------------------
    async def deploy(self, req: Deploy) -> dict[str, object]:
        """Start (new app) or roll (existing app) to the release at `req.path`; reply once healthy."""
        if not _APP_NAME.match(req.app) or req.app.endswith("-"):
            raise AppError(
                f"invalid app name {req.app!r}: use 1-63 of a-z, 0-9 and '-', starting with a letter"
            )
        if req.instances < 0 or req.idle_timeout < 0:
            raise AppError("instances and idle_timeout must not be negative")
        routes = tuple(req.routes)
        self._check_routes(req.app, routes)
        release = await self._load(req.app, req.version, Path(req.path))
        existing = self.apps.get(req.app)
        if existing is not None:
            return await self._redeploy(existing, release, routes, req)
        app = self._make_app(release, (), req.instances, req.idle_timeout)
        self.apps[req.app] = app  # visible to status while it starts, not routed yet
        try:
            async with app.operation:
                await rollout.rollout(app, release, req.instances)
        except BaseException as exc:
            if self.apps.get(req.app) is app:
                del self.apps[req.app]
            await app.close()
            if isinstance(exc, InstanceFailed):
                raise AppError(f"deploy of {req.app} {req.version} failed: {exc.message}") from exc
            raise
        self._take_allow(app, req.maintenance_allow)
        await self._commit_routes(app, routes)
        self._save(app)
        self._point_current(app)
        app.events.deployed(release.recorded_at)
        app.log_file.event(f"deployed {release.version} with routes {', '.join(routes)}")
        return app.status()

    async def _redeploy(
        self, app: ManagedApp, release: Release, routes: tuple[str, ...], req: Deploy
    ) -> dict[str, object]:
        if app.operation.locked():
            raise AppError(
                f"a deploy or another change of {app.name} is already in progress",
                hint="wait for it to finish, then try again",
            )
        async with app.operation:
            was_stopped = app.stopped
            replaced = app.release
            app.stopped = False
            live = sum(1 for i in app.instances if i.state in LIVE)
            count = req.instances if req.instances else live
            try:
                await rollout.rollout(app, release, count)
            except InstanceFailed as exc:
                app.stopped = was_stopped
                app.refresh()
                self._save(app)
                raise AppError(
                    f"deploy of {app.name} {req.version} failed, {app.release.version} keeps serving: "
                    f"{exc.message}"
                ) from exc
            app.min_instances = req.instances
            app.idle_timeout = req.idle_timeout
            app.deployed_at = datetime.now(UTC)
            app.last_error = ""
            self._take_allow(app, req.maintenance_allow)
            await self._commit_routes(app, routes)
            app.refresh()
            self._save(app)
            self._point_current(app)
            app.events.deployed(release.recorded_at, replaced.recorded_at)
        app.log_file.event(f"deployed {release.version} with routes {', '.join(routes)}")
        return app.status()

    def _point_current(self, app: ManagedApp) -> None:
        """`current` names the release now serving: tako-server owns "which release is live"."""
        try:
            point_current(app.release)
        except OSError as exc:
            # The release serves; only the link is stale. Commands ask tako-server, not the link.
            log.warning("app %s: cannot point current to %s: %s", app.name, app.release.path, exc)

    async def _commit_routes(self, app: ManagedApp, routes: tuple[str, ...]) -> None:
        async with self._commit:
            # Checked again: another app may have claimed a route while this one was starting.
            self._check_routes(app.name, routes)
            app.routes = routes
            self.apps[app.name] = app
            self._rebuild_routes()
        # A deploy's reply says the release serves: with data-plane workers, only once each of them has
        # the new routes (else a request right after `tako deploy` could meet a worker that does not know
        # the host yet and refuses its TLS handshake).
        await self.settled()

    def _take_allow(self, app: ManagedApp, allow: tuple[str, ...] | None) -> None:
        """A deploy's `maintenance_allow` (None: a rollback, which keeps the list the app has)."""
        if allow is not None and allow != app.maintenance_setting.allow:
            self._set_maintenance(app, replace(app.maintenance_setting, allow=allow))

    def _set_maintenance(self, app: ManagedApp, setting: MaintenanceSetting) -> None:
        self.store.save_maintenance(MaintenanceRecord(app.name, setting.on, setting.message, setting.allow))
        app.set_maintenance(setting)

    async def maintenance(self, req: Maintenance) -> dict[str, object]:
        """Turn maintenance on or off; persisted first, so a restart keeps what the reply said, and
        answered once every data-plane process applies it (`settled`)."""
        app = self.get(req.app)
        old = app.maintenance_setting
        allow = old.allow if req.allow is None else req.allow
        message = req.message if req.on else ""
        self._set_maintenance(app, MaintenanceSetting(on=req.on, message=message, allow=allow))
        if req.on != old.on:
            app.log_file.event("maintenance on" if req.on else "maintenance off")
        await self.settled()
        return app.status()

    async def reload(self, name: str) -> dict[str, object]:
        """Rolling restart with the release's `.env` (and app.json) read again."""
        app = self.get(name)
        if app.operation.locked():
            raise AppError(f"a deploy or another change of {name} is already in progress")
        async with app.operation:
            release = await self._load(name, app.release.version, app.release.path)
            live = sum(1 for i in app.instances if i.state in LIVE)
            if app.stopped or (live == 0 and app.min_instances == 0):
                app.release = release  # stopped, or on-demand and idle: the next start uses the new .env
            else:
                try:
                    await rollout.rollout(app, release, max(app.min_instances, live))
                except InstanceFailed as exc:
                    raise AppError(
                        f"reload of {name} failed, the running instances keep serving: {exc.message}"
                    ) from exc
            app.last_error = ""
            app.refresh()
            self._save(app)
        return app.status()

    async def stop(self, name: str) -> dict[str, object]:
        app = self.get(name)
        async with app.operation:
            app.stopped = True
            await app.stop_all()
            app.refresh()
            self._save(app)
        app.log_file.event("stopped by the stop command")
        return app.status()

    async def delete(self, name: str) -> dict[str, object]:
        app = self.get(name)
        async with app.operation:
            app.stopped = True
            await app.close()
            if app.release.uid is not None:
                # What the app wrote (its HOME, shared/data) goes back to tako so its files can be removed.
                await asyncio.to_thread(isolation.reclaim, self.data_dir / "apps" / name, app.release.uid)
            self.apps.pop(name, None)
            self.events.pop(name, None)  # a deleted app's series leave /metrics with it
            self.store.delete_app(name)
            self._rebuild_routes()
        return {"app": name, "deleted": True}

    # -- lifecycle --------------------------------------------------------------------------------------
    async def adopt_running(self) -> int:
        """Adopt the instances a previous tako-server left running; returns how many. The one entry point
        of adoption: tako-server calls it at start after `restore`, and the hand-over (server/handover.py)
        once the old tako-server has let go of its instances.

        A recorded instance is adopted when it is the very process recorded (pid and start time: not a
        recycled pid), its app is restored and not stopped, it runs the app's current release, and it
        answers its health check. Any other one still running is stopped (SIGTERM, SIGKILL after
        stop_grace) in the background; every record is dropped and adopted instances recorded again.
        """
        records = self.store.processes()
        verdicts = await asyncio.gather(*(self._adoptable(rec) for rec in records))
        adopted = 0
        for rec, ok in zip(records, verdicts, strict=True):
            self.store.forget_process(rec.instance)
            app = self.apps.get(rec.app)
            if ok and app is not None:
                app.adopt_instance(rec.instance, rec.pid, rec.port)
                adopted += 1
            elif is_leader(rec.pid, int(rec.create_time)) or group_members(rec.pid):
                # (A group whose leader is gone is still ours: the kernel never reuses a pid naming a group.)
                task = asyncio.create_task(self._stop_left_over(rec), name=f"stop-{rec.instance}")
                self._left_over.add(task)
                task.add_done_callback(self._left_over.discard)
        if adopted or records:
            log.info("adopted %d of %d recorded instance(s)", adopted, len(records))
        return adopted

    async def _adoptable(self, rec: ProcessRecord) -> bool:
        app = self.apps.get(rec.app)
        if app is None or app.stopped or not rec.port or rec.version != app.release.version:
            return False
        if not is_leader(rec.pid, int(rec.create_time)):
            return False
        return await health.probe(rec.port, app.release.health_check, timeout=2.0)

    async def _stop_left_over(self, rec: ProcessRecord) -> None:
        why = "its app is gone or stopped" if rec.app not in self.apps else "it is not adoptable"
        log.warning(
            "stopping instance %s of %s left by a previous tako-server: %s", rec.instance, rec.app, why
        )
        signal_group(rec.pid, signal.SIGTERM)
        if is_leader(rec.pid, int(rec.create_time)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_exit(rec.pid), self.settings.stop_grace)
        kill_group(rec.pid)

    async def restore(self) -> None:
        """Bring back every persisted app with its routes; then `adopt_running` takes the instances a
        previous tako-server left (in a hand-over only once the old one let go of them), and
        `start_restored` starts the missing ones."""
        records = self.store.load_apps()
        maintenance = self.store.load_maintenance()
        for rec in records:
            try:
                release = await self._load(rec.name, rec.version, Path(rec.path))
            except TakoError as exc:
                log.error("cannot restore app %s: %s", rec.name, exc.message)
                continue
            try:
                deployed = datetime.fromisoformat(rec.deployed_at)
            except ValueError:
                deployed = None
            app = self._make_app(release, rec.routes, rec.instances, rec.idle_timeout, deployed)
            app.stopped = rec.stopped
            app.last_error = rec.last_error
            kept = maintenance.get(rec.name)
            if kept is not None:
                app.set_maintenance(
                    MaintenanceSetting(on=kept.on, message=kept.message, allow=kept.allow), publish=False
                )
            self.apps[rec.name] = app
        try:
            self._rebuild_routes()
        except (RouteError, ValueError) as exc:
            log.error("stored routes are inconsistent: %s", exc)

    def start_restored(self) -> None:
        """Start the always-on instances of the restored apps in the background (the listeners are open
        already): a request for an app whose instances are still starting waits as in a cold start."""
        for app in self.apps.values():
            missing = app.min_instances - sum(1 for i in app.instances if i.state in LIVE)
            if app.stopped or missing <= 0:
                app.refresh()
            else:
                app.start_in_background(self._start_restored(app, missing))

    async def _start_restored(self, app: ManagedApp, count: int) -> None:
        async with app.operation:
            app.set_state(AppState.STARTING)
            results = await asyncio.gather(
                *(
                    app.start_instance(app.release, confirm=1, timeout=self.settings.healthy_timeout)
                    for _ in range(count)
                ),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            for r in failed:
                app.last_error = r.message if isinstance(r, TakoError) else repr(r)
                log.error("app %s: %s", app.name, app.last_error)
            app.refresh()
        if failed:
            app.keep_minimum(delay=1.0, reload=True)

    async def close(self) -> None:
        """tako-server stops (the operator wants it off): drain and stop every instance."""
        # Left-over instances still being stopped are waited for (stop_grace at most), not abandoned:
        # their records are gone already, so no later tako-server would find them.
        await asyncio.gather(
            *self._left_over, *(app.close() for app in self.apps.values()), return_exceptions=True
        )
        for app in self.apps.values():
            self._sync_processes(app)

    def detach(self) -> None:
        """tako-server exits for a restart or hand-over: leave every instance running, and on record, for
        the next tako-server to adopt (`adopt_running`)."""
        for app in self.apps.values():
            app.detach()


async def _nothing_to_wait_for() -> None:
    return None
