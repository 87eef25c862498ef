"""`AppCounters`: one app's traffic counters in one process, bumped by the client connection per request;
`TrafficCounters`: every app's, by name; `RequestIds`: the counter behind the request ids this process
makes (tako.server.observe.request_id says what an id is); `InFlight`: one instance's requests in flight
(in the main process counted into its app's `Activity` too); `Rotation`, an app's instances and the round
robin over them.

Compiled with Cython where possible, typed by counters.pxd (see compiled.py): the updates are C adds on
struct fields and C calls from client.py. As a Python class called from compiled code, counting took 20 %
more machine instructions per request than the proxy spent without it (callgrind's count over
bench/proxy/hotpath.py). The snapshots readers use are built from these in tako.server.observe.traffic.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tako.server.proxy import native

# Upper bounds in seconds: Prometheus' default histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
# The name requests no app answered are counted under: tako-server's own answers before or without a
# route (unknown hosts, malformed requests, /_tako/status, ACME challenges, redirects to HTTPS). App names
# start with a letter, so it is never an app's.
UNROUTED_APP = "_unrouted"
# Kinds of upstream failure, as the proxy tells them apart (`upstream_error` takes the index).
UPSTREAM_ERROR_KINDS: tuple[str, ...] = ("connect", "timeout", "reset", "bad_response", "unavailable")


class AppCounters:
    """One app's counters in this process: cumulative, except `in_flight` and `websockets_open`."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "cold_starts",
        "counting",
        "in_flight",
        "latency",
        "latency_sum",
        "name",
        "requests",
        "upstream_errors",
        "upstream_seconds_sum",
        "websockets_open",
    )

    def __init__(self, name: str, counting: bool = True) -> None:
        self.name = name
        # False with `[metrics] count_requests = false`: `finished` returns at once; the gauges and the
        # rare events (errors, cold starts, tunnels) are still kept, they cost nothing per request.
        self.counting = counting
        self.requests = [0, 0, 0, 0, 0]  # by status // 100 - 1
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bound, then +Inf; not cumulative
        self.latency_sum = 0.0
        self.upstream_seconds_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0
        self.upstream_errors = [0] * len(UPSTREAM_ERROR_KINDS)
        self.cold_starts = 0
        self.websockets_open = 0

    def finished(
        self, status: int, seconds: float, upstream_seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        """A request's response is complete (or the proxy answered it itself)."""
        if not self.counting:
            return
        index = status // 100 - 1
        self.requests[index if 0 <= index < 5 else 4] += 1
        bucket = 0
        for bound in LATENCY_BUCKETS:  # most requests stop at the first bounds
            if seconds <= bound:
                break
            bucket += 1
        self.latency[bucket] += 1
        self.latency_sum += seconds
        self.upstream_seconds_sum += upstream_seconds
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def tunnel_closed(self, bytes_in: int, bytes_out: int) -> None:
        """A WebSocket (any tunnel after a 101) ended: counted as a 1xx request, not in the latencies."""
        self.requests[0] += 1
        self.websockets_open -= 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def upstream_error(self, kind: int) -> None:
        """An upstream failure; `kind` indexes UPSTREAM_ERROR_KINDS."""
        self.upstream_errors[kind] += 1


class TrafficCounters:
    """Every app's counters in this process, created on an app's first request. With `counting` off
    (`[metrics] count_requests = false`) requests are not counted: readers get no figures at all."""

    __slots__ = ("apps", "counting")

    def __init__(self, counting: bool = True) -> None:
        self.apps: dict[str, AppCounters] = {}
        self.counting = counting

    def for_app(self, name: str) -> AppCounters:
        counters = self.apps.get(name)
        if counters is None:
            counters = self.apps[name] = AppCounters(name, self.counting)
        return counters


class RequestIds:
    """Makes this process's request ids: a per-process random prefix and a counter in hex
    (`3f9c2a1be07d4c55-1a`), unique across processes and restarts without a random draw per request.

    Here rather than with the rest of request_id.py so that making an id is a C call from client.py on a C
    counter, where as a Python class it was a Python frame per request.
    """

    __slots__ = ("_start", "_text")

    def __init__(self) -> None:
        prefix = os.urandom(8).hex().encode() + b"-"
        self._start = len(prefix)  # where the counter's hex digits start in `_text`
        self._text = bytearray(prefix + b"0")  # the last id made

    def next(self) -> bytes:
        # The counter is counted up in its hex digits in place, and the id is a copy of them: compiled, a
        # few C operations on the bytearray where formatting a new number took 1,000 instructions (and
        # native.copy where `bytes(text)`, a type call, took 600).
        text = self._text
        i = len(text) - 1
        while i >= self._start:
            digit = text[i]
            if digit == 57:  # "9"
                text[i] = 97  # "a"
                return native.copy(text)
            if digit != 102:  # "f"
                text[i] = digit + 1
                return native.copy(text)
            text[i] = 48  # "0", carried into the next digit
            i -= 1
        text.insert(self._start, 49)  # "1": one digit more
        return native.copy(text)


class Activity:
    """An app's requests in flight across its instances, and when it last had none: what idle scaling
    reads in the main process (tako.server.apps.scaling). Its instances count into it (`InFlight`)."""

    __slots__ = ("inflight", "last")

    def __init__(self) -> None:
        self.inflight = 0
        self.last = time.monotonic()


class InFlight:
    """One instance's requests in flight, started and answered in this process: the base of the main
    process's instances (apps.instance.Instance, which also count into their app's `Activity`) and of a
    data-plane worker's upstreams (workers.child.WorkerUpstream). Compiled, the two calls the proxy makes
    per request are C calls instead of Python frames (about 700 machine instructions a request in a
    worker; in the main process four frames, the instance's key among them, about 1,500). While
    `report_idle` is set, `idle` is called when the count comes back to zero, for a subclass waiting for
    that (an instance draining); otherwise counting runs no Python code at all."""

    __slots__ = ("activity", "answered", "inflight", "key", "report_idle", "starts")

    def __init__(self, activity: Activity | None = None) -> None:
        self.key = ""  # the proxy's pool key (a subclass sets it): read per request, a C field compiled
        self.inflight = 0
        self.starts = 0  # cumulative, so the main process sees activity even if in-flight did not change
        self.answered = 0  # cumulative: requests it answered whole (health checks take it as a sign of life)
        self.activity = activity
        self.report_idle = False

    def request_started(self) -> None:
        self.inflight += 1
        self.starts += 1
        activity = self.activity
        if activity is not None:
            activity.inflight += 1

    def request_finished(self) -> None:
        self.inflight -= 1
        activity = self.activity
        if activity is not None:
            activity.inflight -= 1
            if activity.inflight <= 0:
                activity.last = time.monotonic()  # the clock is read only when the app goes idle
        if self.inflight <= 0:
            self.inflight = 0
            if self.report_idle:
                self.idle()

    def request_answered(self) -> None:
        self.answered += 1
        self.request_finished()

    def idle(self) -> None:
        """No request in flight any more (called while `report_idle` is set): nothing here."""


class Rotation:
    """An app's instances in rotation (each with an `inflight` count) and the round robin over them: the
    base of the gates, `ManagedApp` in the main process and a data-plane worker's `WorkerGate`. Compiled,
    `pick`, a call per request, runs no Python frame (a Python `pick` was one frame a request), and the two
    other things the proxy reads of a gate on every request are C fields (a subclass keeps them current):
    `maintenance`, its answer while the app is in maintenance (proxy.maintenance.MaintenanceAnswer), and
    `static`, its `[tako] static` mounts (static_files.StaticMounts)."""

    __slots__ = ("_last", "maintenance", "rotation", "static")

    def __init__(self) -> None:
        self.maintenance: Any = None
        self.static: Any = None
        self.rotation: tuple[Any, ...] = ()
        self._last = 0  # the position picked last

    def pick(self) -> Any:
        """The instance after the last one picked, or the one after it when that has fewer requests in
        flight; None when the rotation is empty."""
        rotation = self.rotation
        n = len(rotation)
        if n == 0:
            return None
        if n == 1:
            return rotation[0]
        i = self._last = (self._last + 1) % n
        first = rotation[i]
        if first.inflight == 0:
            return first
        other = rotation[(i + 1) % n]
        return other if other.inflight < first.inflight else first
