"""`[metrics] listen` as read from server-config.toml, and the last minute's figures of `tako status`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tako.config.server import MetricsSettings, parse_server_config
from tako.errors import ConfigError
from tako.server import observe
from tako.server.observe.live_figures import WINDOW, LiveFigures, quantile
from tako.server.observe.metrics_service import MetricsService
from tako.server.observe.metrics_sources import MetricsSources
from tako.server.observe.traffic import LATENCY_BUCKETS, TrafficCounters


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9898", ("127.0.0.1", 9898)),
        ("10.0.0.5:9100", ("10.0.0.5", 9100)),
        ("[fd00::5]:9898", ("fd00::5", 9898)),
        ("", None),
    ],
)
def test_listen_names_an_address_or_turns_the_listener_off(listen: str, address: object) -> None:
    assert parse_server_config({"metrics": {"listen": listen}}, "f.toml").metrics.address == address


@pytest.mark.parametrize("listen", ["9898", "localhost", ":9898", "host:port", "127.0.0.1:70000"])
def test_a_listen_that_is_not_host_port_is_refused_with_an_example(listen: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_server_config({"metrics": {"listen": listen}}, "f.toml")
    assert "metrics.listen: expected HOST:PORT" in str(refused.value)
    assert refused.value.hint and "127.0.0.1:9898" in refused.value.hint


def test_count_requests_is_true_or_false() -> None:
    assert parse_server_config({}, "f.toml").metrics.count_requests is True
    off = parse_server_config({"metrics": {"count_requests": False}}, "f.toml")
    assert off.metrics.count_requests is False
    with pytest.raises(ConfigError) as refused:
        parse_server_config({"metrics": {"count_requests": "no"}}, "f.toml")
    assert "metrics.count_requests: expected true or false, got 'no'" in str(refused.value)


def test_p95_is_interpolated_inside_its_bucket() -> None:
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    first = LATENCY_BUCKETS.index(0.05)
    buckets[first] = 100  # every request between 25 and 50 ms
    assert quantile(0.95, buckets) == pytest.approx(0.025 + 0.025 * 0.95)
    buckets[-1] = 1000  # most of them slower than the last bound: the last bound is the answer
    assert quantile(0.95, buckets) == LATENCY_BUCKETS[-1]


def test_the_figures_cover_the_last_minute_only() -> None:
    now = [0.0]
    counters = TrafficCounters()
    web = counters.for_app("web")
    figures = LiveFigures(counters.snapshot, clock=lambda: now[0])
    for _ in range(50):  # an old burst, before the window
        web.finished(500, 0.01, 0.01, 10, 10)
    for _ in range(13):  # a sample every 5 s for a minute, with 6 requests in each 5 s, one of them a 5xx
        now[0] += 5
        figures.sample()
        for status in (200, 200, 200, 200, 200, 503):
            web.finished(status, 0.2, 0.1, 10, 10)
    now[0] += 1
    last = figures.for_app("web")
    assert last["window_seconds"] == WINDOW + 1
    assert last["requests"] == 6 * 13  # since the newest sample at least a minute old: not the burst
    assert last["error_rate"] == pytest.approx(1 / 6)
    assert last["requests_per_second"] == pytest.approx(78 / 61)
    assert last["p95_seconds"] == pytest.approx(0.1 + 0.15 * 0.95)  # all 0.2 s: inside (0.1, 0.25]
    assert figures.for_app("other") == {
        "window_seconds": WINDOW + 1,
        "requests": 0,
        "requests_per_second": 0.0,
        "error_rate": None,
        "p95_seconds": None,
    }


async def test_without_prometheus_client_tako_server_serves_with_the_listener_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server upgraded without its dependencies (`tako servers upgrade` installs with --no-deps)."""
    for module in [m for m in sys.modules if m.split(".")[0] == "prometheus_client"] + ["prometheus_client"]:
        monkeypatch.setitem(sys.modules, module, None)  # importing it (or a submodule) fails
    for name in ("metrics", "metrics_listener"):  # imported afresh, as in a server that never had them
        monkeypatch.delitem(sys.modules, f"tako.server.observe.{name}", raising=False)
        monkeypatch.delattr(observe, name, raising=False)
    counters = TrafficCounters()
    sources = MetricsSources(traffic=counters.snapshot, apps=list, events=dict)
    service = MetricsService(MetricsSettings(listen="127.0.0.1:0"), sources)
    await service.start()
    try:
        assert service.port is None
        assert "metrics listener off" in caplog.text and "scripts/install-server" in caplog.text
        assert service.figures.for_app("web")["requests"] == 0  # tako status still has its figures
    finally:
        await service.close()


# Run in a process of its own: this one has imported prometheus_client for other tests.
_FIRST_SCRAPE = """
import asyncio, sys
from tako.config.server import MetricsSettings
from tako.server.observe.metrics_service import MetricsService
from tako.server.observe.metrics_sources import MetricsSources
from tako.server.observe.traffic import TrafficCounters

async def main():
    sources = MetricsSources(traffic=TrafficCounters().snapshot, apps=list, events=dict)
    service = MetricsService(MetricsSettings(listen="127.0.0.1:0"), sources)
    await service.start()
    try:
        assert service.port and "prometheus_client" not in sys.modules, "imported at start"
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(b"GET /metrics HTTP/1.1\\r\\nHost: m\\r\\n\\r\\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ") and b"tako_server_info" in answer, answer[:300]
    finally:
        await service.close()

asyncio.run(main())
"""


def test_prometheus_client_is_imported_at_the_first_scrape_not_at_start() -> None:
    """Start-up is on the way to serving again after a crash; the import (60-80 ms) waits for a scraper."""
    done = subprocess.run([sys.executable, "-c", _FIRST_SCRAPE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
