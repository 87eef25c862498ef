"""One running process of an app: its lifecycle enum, exit watcher and health loop.

An instance runs in its own session and its output goes through a log relay (relay.py), so it outlives
tako-server; the next tako-server adopts it (`Instance.adopt`) and supervises it exactly like one it started.

An instance implements the proxy's `Upstream`: `request_started/finished` (proxy/counters.py, `InFlight`)
count in-flight requests, which draining and idle stop wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

from tako.config.server import AppSettings
from tako.errors import InstanceFailed, IsolationError
from tako.server.apps import health, spawner
from tako.server.apps.events import AppEvents
from tako.server.apps.logs import AppLog
from tako.server.apps.release import Release
from tako.server.proxy.counters import Activity, InFlight

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


class Instance(InFlight):
    """A process started from a release's start command, supervised until it stops or fails. `InFlight`
    counts its requests in flight (and its app's `Activity`), compiled with the proxy."""

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
        instance_id: str = "",
    ) -> None:
        super().__init__(activity)
        self.id = instance_id or secrets.token_hex(4)
        self.key = self.id  # the proxy's pool key, read per request: an attribute, not a property
        # `answered` (InFlight) counts the requests it answered whole, through this process's proxy and the
        # workers' (workers.ledger): what excuses a late health check (`_health_loop`).
        self.release = release
        self._port = port
        self._log_file = log_file
        self._settings = settings
        self._on_state = on_state
        self.restarts = restarts
        self._events = events or AppEvents()
        self.state = InstanceState.STARTING
        self.started_at = datetime.now(UTC)
        self.proc: subprocess.Popen[bytes] | None = None  # None when adopted: not tako-server's child
        self._relay: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.adopted = False
        self.gone = False  # the leader has exited
        self.exit_status: int | None = None  # known only for tako-server's own children
        self.failure: str = ""
        self.exited = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._health_task: asyncio.Task[None] | None = None
        self._stop_deadline = 0.0
        self._stop_grace = 0.0
        self._stop_forced = False  # the group outlived the stop grace period and was killed
        self._members: list[int] = []

    # -- Upstream (hot path: no logging, no awaits) --------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def error_pages(self) -> dict[int, bytes]:
        """Its release's errors/50x.html (read with the release): used only when answering an error."""
        return self.release.pages.errors

    # In-flight counting is `InFlight`'s (compiled, no Python code per request): the app's activity clock
    # is read only when the app's in-flight reaches zero, the only time idle scaling reads it, and the idle
    # event is set from `idle` only while `drain` waits for it. The ledger replays the workers' counts
    # through the same calls.
    def idle(self) -> None:
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
        return self._log_file.tail(self.id, TAIL_IN_ERRORS)

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
        limits = (self._log_file.max_bytes, self._log_file.backups)
        try:
            spawned = spawner.spawn(self.release, env, self._log_file.directory, self.id, limits)
        except (OSError, IsolationError) as exc:
            why = exc.message if isinstance(exc, IsolationError) else str(exc)
            self.failure = f"{self.describe()} could not be started: {why}"
            self.exited.set()
            self.set_state(InstanceState.FAILED, self.failure)
            raise InstanceFailed(self.failure) from exc
        self.proc, self._relay = spawned.proc, spawned.relay
        self.pid = self.proc.pid
        self._log_file.event(f"instance {self.id} started: version {self.release.version}, port {self.port}")
        self._tasks.append(asyncio.create_task(self._watch(), name=f"watch-{self.id}"))

    def adopt(self, pid: int) -> None:
        """Supervise `pid`, an instance a previous tako-server started and left running (already probed
        healthy): in rotation at once, watched through a pidfd since it is not this process's child."""
        self.pid = pid
        self.adopted = True
        self._log_file.event(f"instance {self.id} adopted: version {self.release.version}, port {self.port}")
        self._tasks.append(asyncio.create_task(self._watch(), name=f"watch-{self.id}"))
        self.set_state(InstanceState.HEALTHY, "adopted from a previous tako-server")
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{self.id}")

    async def _watch(self) -> None:
        assert self.pid is not None
        await spawner.wait_exit(self.pid)
        self.gone = True
        self.exit_status = spawner.exit_status(self.proc)
        if self.state is InstanceState.STOPPING:
            # The start shell may exit before the app it started: let the group finish its own drain.
            loop = asyncio.get_running_loop()
            while self._stop_deadline > loop.time() and spawner.any_alive(self._members):
                await asyncio.sleep(0.02)
            if spawner.any_alive(self._members):
                self._force_stop()
        # Whatever is left in the group dies with the leader: no orphans holding the port or the pipe.
        spawner.kill_group(self.pid)
        await self._relay_done()
        self._stop_health()
        self._idle.set()
        what = _describe_exit(self.exit_status)
        if self.state not in (InstanceState.STOPPING, InstanceState.STOPPED, InstanceState.FAILED):
            self.failure = self.failure_message(what)
            self._log_file.event(f"instance {self.id} {what}")
            log.warning("instance exited app=%s instance=%s %s", self.release.app, self.id, what)
            self.exited.set()
            self.set_state(InstanceState.FAILED, what)
        else:
            self._log_file.event(f"instance {self.id} stopped ({what})")
            self.exited.set()

    async def _relay_done(self) -> None:
        """The relay exits once the group's last writer is gone: wait (2 s at most) so the instance's last
        lines are in app.log before a failure message quotes them."""
        relay = self._relay
        if relay is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spawner.wait_exit(relay.pid), 2.0)
            spawner.exit_status(relay)  # reaps it

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
            answered = self.answered
            result = await health.check(self.port, self.release.health_check, timeout=max(interval, 1.0))
            # A probe that timed out while the instance answered proxied requests met a busy instance, not
            # a hung one: taking it out of rotation would only move its load to the others, or stall every
            # request when it is the only one (bench/proxy: seconds-long stalls under 5000 connections).
            # A refused connection or a 5xx still counts, and a hung instance answers nothing.
            busy = result is health.Probe.LATE and self.answered != answered
            ok = result is health.Probe.PASSED or busy
            if busy:
                self._events.health_late_busy += 1
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
        if self.pid is not None and not self.gone:
            spawner.kill_group(self.pid)

    async def drain(self, timeout: float) -> None:
        """Leave rotation and wait (at most `timeout`) for in-flight requests to finish."""
        if self.state in LIVE:
            self.set_state(InstanceState.DRAINING)
        if self.inflight <= 0:
            return
        self._idle.clear()
        self.report_idle = True  # `idle` sets the event when the last request in flight finishes
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds; returns once the process is gone."""
        self._stop_health()
        if self.pid is None:
            if self.state is not InstanceState.FAILED:
                self.set_state(InstanceState.STOPPED)
            return
        if not self.exited.is_set():
            self.set_state(InstanceState.STOPPING)
            self._stop_deadline = asyncio.get_running_loop().time() + grace
            self._stop_grace = grace
            self._members = spawner.group_members(self.pid)
            spawner.signal_group(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.exited.wait(), grace)
            except TimeoutError:
                if not self.gone:
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
        assert self.pid is not None
        if not self._stop_forced:
            self._stop_forced = True
            self._log_file.event(f"instance {self.id} did not stop within {self._stop_grace:g} s: killed")
        spawner.kill_group(self.pid)

    def detach(self) -> None:
        """tako-server exits and leaves this instance running for the next one: stop watching it only."""
        for task in [*self._tasks, self._health_task]:
            if task is not None:
                task.cancel()

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


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "exited (status unknown: a previous tako-server started it)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"
