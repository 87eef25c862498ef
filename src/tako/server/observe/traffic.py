"""Per-app traffic counters: counted on the data plane's hot path, read as frozen snapshots.

Three layers:

- `AppCounters`: one app's counters in one process, plain int/float attributes the proxy bumps per
  request (no locks: each process runs one event loop; no allocation beyond CPython's own ints).
- `TrafficCounters`: every app's `AppCounters` in one process (the main process's proxy, or one
  data-plane worker), and `snapshot()` of them as a `TrafficSnapshot`.
- `TrafficTotals`: in tako-server's main process only, the server-wide figures. `TrafficTotals.snapshot()`
  is THE call for readers (the /metrics listener, `tako status`): this process's counters plus the last
  snapshot every data-plane worker sent over the worker channel (`Report.traffic`, at most a second old).

A worker that exits keeps its last counts: `retire(pid)` folds its cumulative counters into a base that
only grows (its gauges, `in_flight` and `websockets_open`, drop to zero, since its connections are gone),
so a restarted worker starting again from zero never makes a total go backwards, as Prometheus counters
must not.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace

# Upper bounds in seconds: Prometheus' default histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Kinds of upstream failure, as the proxy tells them apart.
UPSTREAM_ERROR_KINDS: tuple[str, ...] = ("connect", "timeout", "reset", "bad_response", "unavailable")


@dataclass(frozen=True)
class AppTraffic:
    """One app's figures: cumulative counters, except `in_flight` and `websockets_open` (gauges)."""

    requests: dict[str, int]  # status class "1xx".."5xx" -> count
    latency_buckets: tuple[int, ...]  # per LATENCY_BUCKETS bound, then +Inf; non-cumulative
    latency_sum: float  # seconds
    upstream_seconds_sum: float  # seconds from sending the request to the end of the response
    bytes_in: int  # request bytes received from clients (head and body)
    bytes_out: int  # response bytes written to clients
    in_flight: int
    upstream_errors: dict[str, int]  # kind (UPSTREAM_ERROR_KINDS) -> count
    cold_starts: int  # requests that waited for an instance to start
    websockets_open: int

    def merged(self, other: AppTraffic) -> AppTraffic:
        return AppTraffic(
            requests=_sum_maps(self.requests, other.requests),
            latency_buckets=tuple(
                a + b for a, b in zip(self.latency_buckets, other.latency_buckets, strict=True)
            ),
            latency_sum=self.latency_sum + other.latency_sum,
            upstream_seconds_sum=self.upstream_seconds_sum + other.upstream_seconds_sum,
            bytes_in=self.bytes_in + other.bytes_in,
            bytes_out=self.bytes_out + other.bytes_out,
            in_flight=self.in_flight + other.in_flight,
            upstream_errors=_sum_maps(self.upstream_errors, other.upstream_errors),
            cold_starts=self.cold_starts + other.cold_starts,
            websockets_open=self.websockets_open + other.websockets_open,
        )

    def without_gauges(self) -> AppTraffic:
        return replace(self, in_flight=0, websockets_open=0)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


def _sum_maps(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


@dataclass(frozen=True)
class TrafficSnapshot:
    """Every app's figures at one moment (one process's, or summed). Plain dicts and tuples, so it travels
    on the worker channel as it is."""

    apps: dict[str, AppTraffic] = field(default_factory=dict)

    def merged(self, other: TrafficSnapshot) -> TrafficSnapshot:
        apps = dict(self.apps)
        for name, traffic in other.apps.items():
            mine = apps.get(name)
            apps[name] = traffic if mine is None else mine.merged(traffic)
        return TrafficSnapshot(apps)

    def without_gauges(self) -> TrafficSnapshot:
        return TrafficSnapshot({name: t.without_gauges() for name, t in self.apps.items()})


class AppCounters:
    """One app's counters in this process. The proxy calls the methods below; each is a few int updates."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "cold_starts",
        "in_flight",
        "latency",
        "latency_sum",
        "name",
        "requests",
        "upstream_errors",
        "upstream_seconds_sum",
        "websockets_open",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = [0, 0, 0, 0, 0]  # by status // 100 - 1
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
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
        index = status // 100 - 1
        self.requests[index if 0 <= index < 5 else 4] += 1
        self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
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

    def snapshot(self) -> AppTraffic:
        return AppTraffic(
            requests=dict(zip(STATUS_CLASSES, self.requests, strict=True)),
            latency_buckets=tuple(self.latency),
            latency_sum=self.latency_sum,
            upstream_seconds_sum=self.upstream_seconds_sum,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            in_flight=self.in_flight,
            upstream_errors=dict(zip(UPSTREAM_ERROR_KINDS, self.upstream_errors, strict=True)),
            cold_starts=self.cold_starts,
            websockets_open=self.websockets_open,
        )


class TrafficCounters:
    """Every app's counters in this process, created on an app's first request."""

    __slots__ = ("apps",)

    def __init__(self) -> None:
        self.apps: dict[str, AppCounters] = {}

    def for_app(self, name: str) -> AppCounters:
        counters = self.apps.get(name)
        if counters is None:
            counters = self.apps[name] = AppCounters(name)
        return counters

    def snapshot(self) -> TrafficSnapshot:
        return TrafficSnapshot({name: c.snapshot() for name, c in self.apps.items()})


class TrafficTotals:
    """Server-wide figures in the main process: its own counters plus each data-plane worker's last report."""

    def __init__(self, local: TrafficCounters) -> None:
        self.local = local
        self._workers: dict[int, TrafficSnapshot] = {}  # worker pid -> its last snapshot
        self._retired = TrafficSnapshot()  # exited workers' counters, gauges zeroed

    def update(self, pid: int, snapshot: TrafficSnapshot) -> None:
        """A worker's cumulative snapshot (replaces its previous one)."""
        self._workers[pid] = snapshot

    def retire(self, pid: int) -> None:
        """The worker exited: keep its counts (so totals never go backwards), drop its gauges."""
        last = self._workers.pop(pid, None)
        if last is not None:
            self._retired = self._retired.merged(last.without_gauges())

    def snapshot(self) -> TrafficSnapshot:
        """Every app's figures over this process and every data-plane worker, now."""
        total = self.local.snapshot().merged(self._retired)
        for snapshot in self._workers.values():
            total = total.merged(snapshot)
        return total
