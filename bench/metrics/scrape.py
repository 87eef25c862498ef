"""What one scrape of /metrics costs tako-server: the time to render the exposition for N apps.

Each app has traffic in every status class, latency bucket and upstream error kind, 4 instances, its event
counters and a certificate: the render does what a real scrape does (the collector reading every source,
prometheus_client's text format); only the sources are built here instead of by a running server.

    .venv/bin/python bench/metrics/scrape.py [--apps 100] [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from tako.server.apps.events import AppEvents
from tako.server.apps.instance import InstanceState
from tako.server.observe.metrics import collect, exposition
from tako.server.observe.metrics_sources import MetricsSources
from tako.server.observe.traffic import LATENCY_BUCKETS, UPSTREAM_ERROR_KINDS, TrafficCounters


def sources(apps: int) -> MetricsSources:
    counters = TrafficCounters()
    managed: list[Any] = []
    events: dict[str, AppEvents] = {}
    certificates: dict[str, dict[str, Any]] = {}
    for n in range(apps):
        name = f"app-{n:03d}"
        app = counters.for_app(name)
        for status in (101, 200, 302, 404, 503):
            for seconds in (*LATENCY_BUCKETS, 20.0):
                app.finished(status, seconds, seconds / 2, 512, 4096)
        for kind in range(len(UPSTREAM_ERROR_KINDS)):
            app.upstream_error(kind)
        instances = [SimpleNamespace(state=InstanceState.HEALTHY) for _ in range(4)]
        managed.append(SimpleNamespace(name=name, instances=instances))
        events[name] = AppEvents(instance_starts=4, deploys=3, rollbacks=1)
        certificates[f"{name}.example.com"] = {"not_after": "2027-03-01T00:00:00Z"}
    return MetricsSources(
        traffic=counters.snapshot,
        apps=lambda: managed,
        events=lambda: events,
        certificates=lambda: certificates,
        workers=lambda: [{"pid": 2, "restarts": 0}],
    )


def timed(step: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median and p95 of `step`'s CPU time in milliseconds (CPU time: other processes on a loaded
    machine barely move it, where they double wall-clock times)."""
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        step()
        times.append((time.thread_time() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    src = sources(args.apps)
    families = collect(src)
    body = exposition(families)
    on_loop = timed(lambda: collect(src), args.rounds)
    in_thread = timed(lambda: exposition(families), args.rounds)
    lines = body.count(b"\n")
    print(f"apps={args.apps} body={len(body) / 1024:.0f} KiB lines={lines} rounds={args.rounds}")
    print(f"collect (event loop): CPU median {on_loop[0]:.1f} ms, p95 {on_loop[1]:.1f} ms")
    print(f"text format (thread): CPU median {in_thread[0]:.1f} ms, p95 {in_thread[1]:.1f} ms")


if __name__ == "__main__":
    main()
