"""Per-app traffic counters: counted on the data plane's hot path, read as frozen snapshots.

Three layers:

- `AppCounters` (in the proxy's compiled `counters` module): one app's counters in one process, plain
  number fields the proxy bumps per request (no locks: each process runs one event loop).
- `TrafficCounters` (there too): every app's `AppCounters` in one process (the main process's proxy, or
  one data-plane worker); `traffic_snapshot()` here freezes them as a `TrafficSnapshot`.
- `TrafficTotals`: in tako-server's main process only, the server-wide figures. `TrafficTotals.snapshot()`
  is THE call for readers (the /metrics listener, `tako status`): this process's counters plus the last
  snapshot every data-plane worker sent over the worker channel (`Report.traffic`, at most a second old).

A worker that exits keeps its last counts: `retire(pid)` folds its cumulative counters into a base that
only grows (its gauges, `in_flight` and `websockets_open`, drop to zero, since its connections are gone),
so a restarted worker starting again from zero never makes a total go backwards, as Prometheus counters
must not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tako.server.proxy.counters import LATENCY_BUCKETS as LATENCY_BUCKETS  # re-exported for readers
from tako.server.proxy.counters import STATUS_CLASSES, AppCounters
from tako.server.proxy.counters import UPSTREAM_ERROR_KINDS as UPSTREAM_ERROR_KINDS
from tako.server.proxy.counters import TrafficCounters as ProxyCounters


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


def app_traffic(counters: AppCounters) -> AppTraffic:
    """One app's counters in this process, frozen."""
    return AppTraffic(
        requests=dict(zip(STATUS_CLASSES, counters.requests, strict=True)),
        latency_buckets=tuple(counters.latency),
        latency_sum=counters.latency_sum,
        upstream_seconds_sum=counters.upstream_seconds_sum,
        bytes_in=counters.bytes_in,
        bytes_out=counters.bytes_out,
        in_flight=counters.in_flight,
        upstream_errors=dict(zip(UPSTREAM_ERROR_KINDS, counters.upstream_errors, strict=True)),
        cold_starts=counters.cold_starts,
        websockets_open=counters.websockets_open,
    )


def traffic_snapshot(counters: ProxyCounters) -> TrafficSnapshot:
    """Every app's counters in one process, frozen (none when requests are not counted)."""
    if not counters.counting:
        return TrafficSnapshot()
    return TrafficSnapshot({name: app_traffic(c) for name, c in counters.apps.items()})


class TrafficCounters(ProxyCounters):
    """Counters with their own `snapshot()`, for code that fills counters without a proxy (benchmarks)."""

    __slots__ = ()

    def snapshot(self) -> TrafficSnapshot:
        return traffic_snapshot(self)


class TrafficTotals:
    """Server-wide figures in the main process: its own counters plus each data-plane worker's last report."""

    def __init__(self, local: ProxyCounters) -> None:
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
        total = traffic_snapshot(self.local).merged(self._retired)
        for snapshot in self._workers.values():
            total = total.merged(snapshot)
        return total
