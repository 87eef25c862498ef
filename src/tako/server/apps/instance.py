"""One running process of an app: its lifecycle enum, output pump, exit watcher and health loop.

An instance implements the proxy's `Upstream`: `request_started/finished` count in-flight requests, which
draining and idle stop wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

from tako.config.server import AppSettings
from tako.errors import InstanceFailed, IsolationError
from tako.server.apps import health, spawner
from tako.server.apps.events import AppEvents
from tako.server.apps.logs import AppLog, LineSplitter
from tako.server.apps.release import Release

log = logging.getLogger("tako.server.apps")

TAIL_IN_ERRORS = 10


class InstanceState(enum.Enum):
    STARTING = "starting"  # spawned, not yet healthy
    HEALTHY = "healthy"  # in rotation
    UNHEALTHY = "unhealthy"  # failing health checks: out of rotation, still running
    DRAINING = "draining"  # out of rotation, finishing in-flight requests
    STOPPING = "stopping"  # SIGTERM sent
    STOPPED = "stopped"  # stopped on purpose
    FAILED = "failed"  # exited on its own, never became healthy, or declared dead


LIVE = frozenset({InstanceState.STARTING, InstanceState.HEALTHY, InstanceState.UNHEALTHY})


class Activity:
    """App-wide request activity, shared by its instances (read by idle scaling)."""

    __slots__ = ("inflight", "last")

    def __init__(self) -> None:
        self.inflight = 0
        self.last = time.monotonic()


class Instance:
    """A process started from a release's start command, supervised until it stops or fails."""

    def __init__(
        self,
        release: Release,
        port: int,
        *,
        log_file: AppLog,
        settings: AppSettings,
        activity: Activity,
        on_state: Callable[[Instance, InstanceState, InstanceState], None],
        restarts: int = 0,
        events: AppEvents | None = None,
    ) -> None:
        self.id = secrets.token_hex(4)
        self.release = release
        self._port = port
        self._log_file = log_file
        self._settings = settings
        self._activity = activity
        self._on_state = on_state
        self.restarts = restarts
        self._events = events or AppEvents()
        self.state = InstanceState.STARTING
        self.started_at = datetime.now(UTC)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.failure: str = ""
        self.inflight = 0
        self.exited = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._lines = LineSplitter()
        self._tasks: list[asyncio.Task[None]] = []
        self._health_task: asyncio.Task[None] | None = None
        self._stop_deadline = 0.0
        self._stop_grace = 0.0
        self._stop_forced = False  # the group outlived the stop grace period and was killed
        self._members: list[int] = []

    # -- Upstream (hot path: no logging, no awaits) --------------------------------------------------
    @property
    def key(self) -> str:
        return self.id

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    def request_started(self) -> None:
        self.inflight += 1
        self._idle.clear()
        act = self._activity
        act.inflight += 1
        act.last = time.monotonic()

    def request_finished(self) -> None:
        self.inflight -= 1
        act = self._activity
        act.inflight -= 1
        act.last = time.monotonic()
        if self.inflight <= 0:
            self.inflight = 0
            self._idle.set()

    # -- lifecycle ------------------------------------------------------------------------------------
    def set_state(self, new: InstanceState, reason: str = "") -> None:
        """The one place an instance changes state; every transition is logged."""
        old = self.state
        if old is new:
            return
        self.state = new
        log.info(
            "instance state app=%s instance=%s version=%s %s -> %s%s",
            self.release.app,
            self.id,
            self.release.version,
            old.value,
            new.value,
            f" reason={reason!r}" if reason else "",
        )
        self._on_state(self, old, new)

    @property
    def tail(self) -> list[str]:
        return list(self._lines.tail)[-TAIL_IN_ERRORS:]

    def describe(self) -> str:
        return f"instance {self.id} of {self.release.app} {self.release.version}"

    def failure_message(self, what: str) -> str:
        tail = self.tail
        text = f"{self.describe()} {what}"
        if tail:
            text += "; last output:\n" + "\n".join(f"  {line}" for line in tail)
        else:
            text += "; it printed nothing"
        return text

    async def start(self) -> None:
        env = spawner.instance_env(self.release, self._port, self.id)
        try:
            self.proc = await spawner.spawn(self.release, env)
        except (OSError, IsolationError) as exc:
            why = exc.message if isinstance(exc, IsolationError) else str(exc)
            self.failure = f"{self.describe()} could not be started: {why}"
            self.exited.set()
            self.set_state(InstanceState.FAILED, self.failure)
            raise InstanceFailed(self.failure) from exc
        self.pid = self.proc.pid
        self._log_file.event(f"instance {self.id} started: version {self.release.version}, port {self.port}")
        self._tasks.append(asyncio.create_task(self._watch(), name=f"watch-{self.id}"))

    async def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        while True:
            try:
                chunk = await stream.read(65536)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            self._log_file.write(self.id, self._lines.feed(chunk))
        self._log_file.write(self.id, self._lines.flush())

    async def _watch(self) -> None:
        assert self.proc is not None
        pump = asyncio.create_task(self._pump(), name=f"pump-{self.id}")
        status = await self.proc.wait()
        self.exit_status = status
        if self.state is InstanceState.STOPPING:
            # The start shell may exit before the app it started: let the group finish its own drain.
            loop = asyncio.get_running_loop()
            while self._stop_deadline > loop.time() and spawner.any_alive(self._members):
                await asyncio.sleep(0.02)
            if spawner.any_alive(self._members):
                self._force_stop()
        # Whatever is left in the group dies with the leader: no orphans holding the port or the pipe.
        spawner.kill_group(self.proc.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), 2.0)
        pump.cancel()
        self._stop_health()
        self._idle.set()
        if self.state not in (InstanceState.STOPPING, InstanceState.STOPPED, InstanceState.FAILED):
            what = _describe_exit(status)
            self.failure = self.failure_message(what)
            self._log_file.event(f"instance {self.id} {what}")
            log.warning("instance exited app=%s instance=%s %s", self.release.app, self.id, what)
            self.exited.set()
            self.set_state(InstanceState.FAILED, what)
        else:
            self._log_file.event(f"instance {self.id} stopped ({_describe_exit(status)})")
            self.exited.set()

    async def wait_healthy(self, timeout: float, *, confirm: int = 1) -> None:
        """Probe fast until `confirm` consecutive successes; raise InstanceFailed on exit or timeout.

        Probes start every 20 ms so a cold start adds little latency, and slow down to 100 ms after 2 s.
        `confirm` > 1 (used for deploys) catches an app that answers once and then crashes.
        """
        loop = asyncio.get_running_loop()
        begin = loop.time()
        deadline = begin + timeout
        successes = 0
        while True:
            if self.exited.is_set() or self.state is InstanceState.FAILED:
                raise InstanceFailed(self.failure or self.failure_message("exited"))
            if self.state is not InstanceState.STARTING:
                raise InstanceFailed(f"{self.describe()} was stopped before it became healthy")
            ok = await health.probe(self.port, self.release.health_check, timeout=1.0)
            if ok and not self.exited.is_set():
                successes += 1
                if successes >= confirm:
                    self.set_state(InstanceState.HEALTHY)
                    self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{self.id}")
                    return
            else:
                successes = 0
            now = loop.time()
            if now >= deadline:
                what = (
                    f"did not answer {self.release.health_check} with a status below 500 within {timeout:g} s"
                )
                self.failure = self.failure_message(what)
                self._log_file.event(f"instance {self.id} {what}")
                raise InstanceFailed(self.failure)
            delay = 0.1 if successes else (0.02 if now - begin < 2.0 else 0.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), min(delay, max(deadline - now, 0.0)))

    async def _health_loop(self) -> None:
        tracker = health.HealthTracker()
        interval = self._settings.health_interval or 1.0
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            # Fixed cadence; a probe may take one interval (at least 1 s): a hung instance fails each tick.
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time())
            if self.state not in (InstanceState.HEALTHY, InstanceState.UNHEALTHY):
                if self.state is InstanceState.DRAINING:
                    continue
                return
            ok = await health.probe(self.port, self.release.health_check, timeout=max(interval, 1.0))
            verdict = tracker.record(ok)
            if not ok:
                self._events.health_failures += 1
            if verdict is health.Verdict.OK and self.state is InstanceState.UNHEALTHY:
                self._log_file.event(f"instance {self.id} is healthy again")
                self.set_state(InstanceState.HEALTHY)
            elif verdict is health.Verdict.OUT and self.state is InstanceState.HEALTHY:
                self._log_file.event(f"instance {self.id} failed {tracker.failures} health checks")
                self.set_state(InstanceState.UNHEALTHY, f"{tracker.failures} failed health checks")
            elif verdict is health.Verdict.DEAD:
                what = f"failed {tracker.failures} health checks in a row and was replaced"
                self.failure = self.failure_message(what)
                self._log_file.event(f"instance {self.id} {what}")
                self.set_state(InstanceState.FAILED, what)
                self._kill()
                return

    def _stop_health(self) -> None:
        task = self._health_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _kill(self) -> None:
        if self.proc is not None and self.exit_status is None:
            spawner.kill_group(self.proc.pid)

    async def drain(self, timeout: float) -> None:
        """Leave rotation and wait (at most `timeout`) for in-flight requests to finish."""
        if self.state in LIVE:
            self.set_state(InstanceState.DRAINING)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds; returns once the process is gone."""
        self._stop_health()
        if self.proc is None:
            if self.state is not InstanceState.FAILED:
                self.set_state(InstanceState.STOPPED)
            return
        if not self.exited.is_set():
            self.set_state(InstanceState.STOPPING)
            self._stop_deadline = asyncio.get_running_loop().time() + grace
            self._stop_grace = grace
            self._members = spawner.group_members(self.proc.pid)
            spawner.signal_group(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.exited.wait(), grace)
            except TimeoutError:
                if self.exit_status is None:
                    # The leader itself is still running. (If only the start shell exited, _watch is
                    # waiting out the same deadline for the rest of the group and kills it.)
                    self._force_stop()
                await self.exited.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.state is not InstanceState.FAILED:
            self.set_state(InstanceState.STOPPED)

    def _force_stop(self) -> None:
        """The group outlived the stop grace period: say so once, and kill it."""
        assert self.proc is not None
        if not self._stop_forced:
            self._stop_forced = True
            self._log_file.event(f"instance {self.id} did not stop within {self._stop_grace:g} s: killed")
        spawner.kill_group(self.proc.pid)

    def status(self) -> dict[str, object]:
        return {
            "id": self.id,
            "version": self.release.version,
            "state": self.state.value,
            "port": self.port,
            "pid": self.pid,
            "healthy": self.state is InstanceState.HEALTHY,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "restarts": self.restarts,
            "inflight": self.inflight,
        }


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"
