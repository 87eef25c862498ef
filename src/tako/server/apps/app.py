"""One deployed app: its release, settings, the set of instances serving it, and its state enum.

`ManagedApp` is also the proxy's `AppGate` for the app: `pick` chooses a healthy instance round-robin,
`wait_upstream` cold-starts one (bounded queue and wait) when none is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from tako.config.server import AppSettings
from tako.errors import InstanceFailed, TakoError
from tako.server.apps.events import AppEvents
from tako.server.apps.instance import LIVE, Instance, InstanceState
from tako.server.apps.logs import AppLog
from tako.server.apps.maintenance import OFF, MaintenanceSetting, build_answer
from tako.server.apps.release import Release, load_release
from tako.server.apps.spawner import allocate_port
from tako.server.proxy.backend import AppUnavailable
from tako.server.proxy.cold_start import ColdStartQueue, app_stopped
from tako.server.proxy.counters import Activity, Rotation
from tako.server.proxy.maintenance import MaintenanceAnswer
from tako.server.proxy.static_files import StaticMounts

log = logging.getLogger("tako.server.apps")

CRASH_WINDOW = 60.0
MAX_BACKOFF = 30.0


class AppState(enum.Enum):
    RUNNING = "running"  # every wanted instance is healthy
    IDLE = "idle"  # on-demand app with no instance running
    STARTING = "starting"  # first instances or a cold start on the way
    DEPLOYING = "deploying"  # a rollout or reload is in progress
    DEGRADED = "degraded"  # fewer healthy instances than wanted (crash, failed health checks)
    STOPPED = "stopped"  # stopped by the `stop` command
    FAILED = "failed"  # no instance can be started


class ManagedApp(Rotation):
    """The runtime of one app. All mutation happens on the event loop; `changed` republishes routing.
    `Rotation` holds its instances in rotation and the proxy's `pick` over them."""

    def __init__(
        self,
        release: Release,
        *,
        routes: tuple[str, ...],
        min_instances: int,
        idle_timeout: int,
        settings: AppSettings,
        log_file: AppLog,
        ports: set[int],
        changed: Callable[[ManagedApp], None],
        deployed_at: datetime | None = None,
        events: AppEvents | None = None,
    ) -> None:
        super().__init__()
        self.name = release.app
        self.events = events or AppEvents()
        self.release = release  # and `static` (the property's setter)
        self.routes = routes
        self.min_instances = min_instances
        self.idle_timeout = idle_timeout
        self.settings = settings
        self.log_file = log_file
        self.deployed_at = deployed_at or datetime.now(UTC)
        self.last_error = ""
        self.state = AppState.STARTING if min_instances else AppState.IDLE
        self.stopped = False
        self.instances: list[Instance] = []  # the serving set: what the supervisor keeps alive
        self.activity = Activity()
        self.operation = asyncio.Lock()  # deploy / reload / stop / delete, one at a time
        self.maintenance_setting = OFF
        self.maintenance: MaintenanceAnswer | None = None  # the gate's answer while in maintenance
        self._maintenance_built: tuple[MaintenanceSetting, Release] | None = None
        self._ports = ports
        self._changed = changed
        self._cold_start_queue = ColdStartQueue()
        self._cold_start: asyncio.Task[None] | None = None
        self._crashes: deque[float] = deque(maxlen=16)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def closing(self) -> bool:
        """tako-server is shutting down or the app is being deleted: start nothing new."""
        return self._closing

    # -- AppGate (hot path) ---------------------------------------------------------------------------
    @property
    def request_buffering(self) -> bool:
        return self.release.request_buffering

    @property
    def compression(self) -> bool:
        return self.release.compression

    @property
    def https(self) -> bool:
        return self.release.https

    @property
    def error_pages(self) -> dict[int, bytes]:
        return self.release.pages.errors

    @property
    def release(self) -> Release:
        """The live release. Setting it sets `static` too, its static mounts, which the proxy reads per
        request as a C field of the gate (`Rotation`)."""
        return self._release

    @release.setter
    def release(self, release: Release) -> None:
        self._release = release
        self.static: StaticMounts | None = release.static

    # -- maintenance ----------------------------------------------------------------------------------
    def set_maintenance(self, setting: MaintenanceSetting, *, publish: bool = True) -> None:
        """Take `setting` (the caller persists it); the gate's answer follows at once, and the routing
        snapshot too unless the caller publishes it (restore, before any instance is known)."""
        self.maintenance_setting = setting
        if publish:
            self.refresh()
        else:
            self._sync_maintenance()

    def _sync_maintenance(self) -> None:
        """Rebuild the gate's answer when the setting or the live release (its maintenance.html) changed."""
        built = (self.maintenance_setting, self.release)
        if (
            self._maintenance_built is None
            or built[0] is not self._maintenance_built[0]
            or (built[1] is not self._maintenance_built[1])
        ):
            self.maintenance = build_answer(*built)
            self._maintenance_built = built

    async def wait_upstream(self) -> Instance:
        return await self._cold_start_queue.wait(
            self, self.settings.cold_start_queue, self.settings.cold_start_timeout
        )

    # -- cold start (the queue's policy is shared with the data-plane workers' gates) ------------------
    def is_stopped(self) -> bool:
        return self.stopped or self._closing

    async def await_cold_start(self, remaining: float) -> None:
        task = self._ensure_cold_start()
        try:
            await asyncio.wait_for(asyncio.shield(task), remaining)
        except TimeoutError:
            return  # the queue's deadline has passed: it answers "App is starting"
        except InstanceFailed as exc:
            raise AppUnavailable(f"App {self.name} failed to start", retry_after=5) from exc
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and (me is None or not me.cancelling()):
                # The cold start itself was cancelled (stop, delete, shutdown): answer, don't hang.
                raise app_stopped(self.name) from None
            raise

    def _ensure_cold_start(self) -> asyncio.Task[None]:
        task = self._cold_start
        if task is None or task.done():
            task = self._cold_start = asyncio.create_task(self._run_cold_start(), name=f"cold-{self.name}")
            # The result is read by the waiters; mark it retrieved so a failure with no waiter is quiet.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def start_in_background(self, start: Coroutine[Any, Any, None]) -> None:
        """Run `start` (tako-server starting the always-on instances) as this app's cold start: a request
        that finds no instance waits for it, bounded like a cold start, instead of failing."""
        task = self._cold_start = asyncio.create_task(start, name=f"start-{self.name}")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _run_cold_start(self) -> None:
        # An instance already on its way up (a crash replacement, a deploy's new one) serves the queue.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.cold_start_timeout
        while loop.time() < deadline and any(i.state is InstanceState.STARTING for i in self.instances):
            await asyncio.sleep(0.01)
        if self.rotation:
            return
        self.log_file.event("cold start: a request arrived and no instance is running")
        self.set_state(AppState.STARTING)
        try:
            await self.start_instance(self.release, confirm=1, timeout=self.settings.cold_start_timeout)
        except InstanceFailed as exc:
            self.last_error = exc.message
            self.set_state(AppState.FAILED if not self.rotation else self.state, "cold start failed")
            raise
        self.refresh()

    # -- instances ------------------------------------------------------------------------------------
    def new_instance(self, release: Release, *, restarts: int = 0) -> Instance:
        port = allocate_port(self._ports)
        self.events.instance_starts += 1
        return self._instance(release, port, restarts=restarts)

    def _instance(self, release: Release, port: int, *, restarts: int = 0, instance_id: str = "") -> Instance:
        return Instance(
            release,
            port,
            log_file=self.log_file,
            settings=self.settings,
            activity=self.activity,
            on_state=self._instance_changed,
            restarts=restarts,
            events=self.events,
            instance_id=instance_id,
        )

    def adopt_instance(self, instance_id: str, pid: int, port: int) -> Instance:
        """Serve with an instance of the current release that a previous tako-server left running (see
        AppRegistry.adopt_running); from now on it is supervised like one this server started."""
        self._ports.add(port)
        inst = self._instance(self.release, port, instance_id=instance_id)
        self.instances.append(inst)
        inst.adopt(pid)
        self.refresh()
        return inst

    async def start_instance(
        self, release: Release, *, confirm: int, timeout: float, restarts: int = 0, serve: bool = True
    ) -> Instance:
        """Start an instance and wait until healthy; it joins the serving set if `serve`.

        On failure the instance is stopped and InstanceFailed raised.
        """
        inst = self.new_instance(release, restarts=restarts)
        if serve:
            self.instances.append(inst)
        try:
            await inst.start()
            await inst.wait_healthy(timeout, confirm=confirm)
        except BaseException:
            await self.retire(inst, drain=False)
            raise
        self.refresh()
        return inst

    async def retire(self, inst: Instance, *, drain: bool = True) -> None:
        """Take an instance out of the serving set: drain it (30 s cap by default), then stop it."""
        if drain:
            await inst.drain(self.settings.drain_timeout)
        await inst.stop(self.settings.stop_grace)
        if inst in self.instances:
            self.instances.remove(inst)
        self._ports.discard(inst.port)
        self.refresh()

    def _instance_changed(self, inst: Instance, old: InstanceState, new: InstanceState) -> None:
        if new is InstanceState.FAILED and inst in self.instances:
            self.instances.remove(inst)
            self._ports.discard(inst.port)
            self.last_error = inst.failure
            # Only instances of the current release are replaced; a rollout's candidates are its business.
            serving = old in (InstanceState.HEALTHY, InstanceState.UNHEALTHY)
            if serving and inst.release is self.release and not self.stopped and not self._closing:
                self._schedule_replacement(inst)
        self.refresh()

    def _schedule_replacement(self, failed: Instance) -> None:
        live = [i for i in self.instances if i.state in LIVE]
        if len(live) >= self.min_instances:
            return  # on-demand apps (or surplus instances) wake again on the next request
        now = time.monotonic()
        self._crashes.append(now)
        recent = sum(1 for t in self._crashes if now - t < CRASH_WINDOW)
        delay = 0.0 if recent <= 1 else min(MAX_BACKOFF, 0.5 * 2 ** (recent - 2))
        self._spawn_replacement(failed.id, failed.restarts + 1, delay)

    def keep_minimum(self, delay: float, *, reload: bool = False) -> None:
        """After failed starts (e.g. at restore): keep trying, with backoff, until the minimum runs."""
        live = sum(1 for i in self.instances if i.state in LIVE)
        for _ in range(self.min_instances - live):
            self._spawn_replacement("", 1, delay, first_attempt=1 if reload else 0)

    def _spawn_replacement(self, failed_id: str, restarts: int, delay: float, first_attempt: int = 0) -> None:
        coro = self._replace(failed_id, restarts, delay, first_attempt)
        task = asyncio.create_task(coro, name=f"replace-{self.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _replace(self, failed_id: str, restarts: int, delay: float, attempt: int = 0) -> None:
        what = f"failed instance {failed_id}" if failed_id else "a failed start"
        while not self.stopped and not self._closing:
            if delay:
                self.log_file.event(f"restarting in {delay:g} s to replace {what}")
                await asyncio.sleep(delay)
            live = [i for i in self.instances if i.state in LIVE]
            if self.stopped or self._closing or len(live) >= self.min_instances:
                return
            if attempt and not live and not self.operation.locked():
                # Nothing runs: read the release again, so fixing its files is enough to recover.
                with contextlib.suppress(TakoError):
                    old = self.release
                    self.release = load_release(self.name, old.version, old.path, uid=old.uid)
            self.events.instance_restarts += 1
            try:
                inst = await self.start_instance(
                    self.release,
                    confirm=1,
                    timeout=self.settings.healthy_timeout,
                    restarts=restarts,
                )
            except InstanceFailed as exc:
                self.last_error = exc.message
                attempt += 1
                restarts += 1
                delay = min(MAX_BACKOFF, max(1.0, delay * 2))
                continue
            self.log_file.event(f"instance {inst.id} replaced {what}")
            return

    def refresh(self) -> None:
        """Recompute the rotation and the app state from the instances; tell the registry."""
        self.rotation = tuple(i for i in self.instances if i.state is InstanceState.HEALTHY)
        if self.stopped:
            state = AppState.STOPPED
        elif self.operation.locked() and self.state is AppState.DEPLOYING:
            state = AppState.DEPLOYING
        elif self.rotation and len(self.rotation) >= self.min_instances:
            state = AppState.RUNNING
        elif self.rotation:
            state = AppState.DEGRADED
        elif any(i.state is InstanceState.STARTING for i in self.instances):
            state = AppState.STARTING
        elif self.min_instances == 0:
            state = AppState.IDLE if self.state is not AppState.FAILED else AppState.FAILED
        elif self.state in (AppState.STARTING, AppState.FAILED):
            state = AppState.FAILED if self.last_error else AppState.STARTING
        else:
            state = AppState.DEGRADED
        self.set_state(state)
        self._sync_maintenance()
        self._changed(self)

    def set_state(self, new: AppState, reason: str = "") -> None:
        """The one place an app changes state; every transition is logged."""
        if new is self.state:
            return
        log.info(
            "app state app=%s %s -> %s%s",
            self.name,
            self.state.value,
            new.value,
            f" reason={reason!r}" if reason else "",
        )
        self.state = new

    async def stop_all(self) -> None:
        """Drain and stop every instance concurrently."""
        for task in list(self._background):
            task.cancel()
        if self._cold_start is not None and not self._cold_start.done():
            self._cold_start.cancel()
        await asyncio.gather(*(self.retire(i) for i in list(self.instances)), return_exceptions=True)

    def detach(self) -> None:
        """tako-server exits for a restart or hand-over: start nothing more, stop watching the instances,
        leave them running for the next tako-server."""
        self._closing = True
        for task in [*self._background, self._cold_start]:
            if task is not None:
                task.cancel()
        for inst in self.instances:
            inst.detach()
        self.log_file.close()

    async def close(self) -> None:
        """Shutdown of tako-server: stop everything, remember nothing (the state store keeps the app)."""
        self._closing = True
        await self.stop_all()
        self.log_file.close()

    def status(self) -> dict[str, object]:
        return {
            "app": self.name,
            "version": self.release.version,
            "env": self.release.env_name or None,
            "state": self.state.value,
            "path": str(self.release.path),
            "routes": list(self.routes),
            "instances": [i.status() for i in self.instances],
            "min_instances": self.min_instances,
            "idle_timeout": self.idle_timeout,
            "deployed_at": self.deployed_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "last_error": self.last_error or None,
            "maintenance": self.maintenance_setting.as_status(),
        }
