"""tako-server's Prometheus metrics: one collector that reads every figure on scrape, rendered in the text
exposition format by `prometheus_client`.

Nothing here runs per request: the data plane only bumps its plain counters (`observe.traffic`), and a
scrape reads them summed over the data-plane workers (`TrafficTotals.snapshot()`), with the apps' event
counters (`apps.events`), their instances' states, the certificates' expiry and the worker pool, through
the callables of `MetricsSources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from tako import __version__
from tako.server.apps.app import ManagedApp
from tako.server.apps.events import AppEvents
from tako.server.apps.instance import InstanceState
from tako.server.observe.metrics_sources import MetricsSources
from tako.server.observe.traffic import LATENCY_BUCKETS, AppTraffic, TrafficSnapshot

# The text format every Prometheus version reads (prometheus_client renders it; its newer default
# Content-Type names a version older servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(sources: MetricsSources) -> bytes:
    """The /metrics body, now (both steps below in one)."""
    return exposition(collect(sources))


def collect(sources: MetricsSources) -> list[Metric]:
    """Every figure, read now. On the event loop: the sources change there."""
    families = list(traffic_metrics(sources.traffic()))
    families += app_metrics(list(sources.apps()), sources.events())
    families += certificate_metrics(sources.certificates())
    families += server_metrics(sources.workers())
    return families


def exposition(families: list[Metric]) -> bytes:
    """The text format of collected figures: touches nothing shared, so it may run in a thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    return generate_latest(registry)


class _Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def traffic_metrics(snapshot: TrafficSnapshot) -> Iterator[Metric]:
    apps = sorted(snapshot.apps.items())
    requests = CounterMetricFamily(
        "tako_http_requests", "Requests answered, by app and status class.", labels=["app", "status_class"]
    )
    duration = HistogramMetricFamily(
        "tako_http_request_duration_seconds",
        "Time from a request's arrival to the end of its response.",
        labels=["app"],
    )
    errors = CounterMetricFamily(
        "tako_upstream_errors", "Requests an instance failed, by kind.", labels=["app", "kind"]
    )
    for app, t in apps:
        for status_class, n in sorted(t.requests.items()):
            requests.add_metric([app, status_class], n)
        duration.add_metric([app], histogram_buckets(t), t.latency_sum)
        for error_kind, n in sorted(t.upstream_errors.items()):
            errors.add_metric([app, error_kind], n)
    yield requests
    yield duration
    yield errors
    for kind, name, documentation, value in _PER_APP:
        family = kind(name, documentation, labels=["app"])
        for app, traffic in apps:
            family.add_metric([app], value(traffic))
        yield family


_PER_APP: tuple[
    tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, Callable[[AppTraffic], float]], ...
] = (
    (
        CounterMetricFamily,
        "tako_http_upstream_seconds",
        "Seconds instances took to answer (request sent to response end).",
        lambda t: t.upstream_seconds_sum,
    ),
    (
        CounterMetricFamily,
        "tako_http_request_bytes",
        "Request bytes received from clients.",
        lambda t: t.bytes_in,
    ),
    (
        CounterMetricFamily,
        "tako_http_response_bytes",
        "Response bytes sent to clients.",
        lambda t: t.bytes_out,
    ),
    (
        GaugeMetricFamily,
        "tako_http_requests_in_flight",
        "Requests being answered now.",
        lambda t: t.in_flight,
    ),
    (
        GaugeMetricFamily,
        "tako_websockets_open",
        "WebSocket (upgraded) connections open now.",
        lambda t: t.websockets_open,
    ),
    (
        CounterMetricFamily,
        "tako_cold_starts",
        "Requests that waited for an instance to start.",
        lambda t: t.cold_starts,
    ),
)


def histogram_buckets(traffic: AppTraffic) -> list[tuple[str, float]]:
    """Prometheus' cumulative `le` buckets from the per-bucket counts (the last one is +Inf)."""
    buckets: list[tuple[str, float]] = []
    total = 0
    bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    for bound, n in zip(bounds, traffic.latency_buckets, strict=True):
        total += n
        buckets.append((bound, total))
    return buckets


_EVENTS = (
    ("tako_instance_starts", "Instances started (deploys, cold starts, replacements).", "instance_starts"),
    ("tako_instance_restarts", "Attempts to replace an instance that failed.", "instance_restarts"),
    ("tako_health_check_failures", "Health probes that failed.", "health_failures"),
    (
        "tako_health_checks_late_busy",
        "Health probes that timed out while the instance answered requests (not failures).",
        "health_late_busy",
    ),
    ("tako_deploys", "Deploys that switched the app to a release (rollbacks included).", "deploys"),
    ("tako_rollbacks", "Deploys back to a release older than the one they replaced.", "rollbacks"),
)


def app_metrics(apps: list[ManagedApp], events: Mapping[str, AppEvents]) -> Iterator[Metric]:
    for name, documentation, attribute in _EVENTS:
        family = CounterMetricFamily(name, documentation, labels=["app"])
        for app, counted in sorted(events.items()):
            family.add_metric([app], getattr(counted, attribute))
        yield family
    instances = GaugeMetricFamily("tako_instances", "Instances by state.", labels=["app", "state"])
    for managed in sorted(apps, key=lambda a: a.name):
        states = [i.state for i in managed.instances]
        for state in InstanceState:
            instances.add_metric([managed.name, state.value], states.count(state))
    yield instances


def certificate_metrics(certificates: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    expiry = GaugeMetricFamily(
        "tako_certificate_expiry_timestamp_seconds",
        "When each host's certificate expires (Unix time).",
        labels=["host"],
    )
    for host, cert in sorted(certificates.items()):
        not_after = cert.get("not_after")
        if isinstance(not_after, str) and not_after:
            expiry.add_metric([host], _unix_time(not_after))
    yield expiry


def _unix_time(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def server_metrics(workers: list[dict[str, Any]]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "tako_data_plane_processes",
        "Processes serving the data plane (tako-server itself and its workers).",
        value=1 + sum(1 for w in workers if w.get("pid")),
    )
    yield CounterMetricFamily(
        "tako_data_plane_worker_restarts",
        "Data-plane workers restarted after they exited or hung.",
        value=sum(int(w.get("restarts") or 0) for w in workers),
    )
    info = GaugeMetricFamily("tako_server_info", "tako-server's version.", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
