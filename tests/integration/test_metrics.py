"""tako-server's Prometheus metrics and live figures, read as a scraper and `tako status` read them: a real
tako-server and app, requests through its proxy, /metrics over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.test_handover import request_handover, stop_pid
from tests.support.server_process import TakoServer, https_get, make_release, wait_for

from tako.server.observe.metrics_listener import MAX_CONNECTIONS

pytestmark = pytest.mark.integration

APP = "web"
HOST = "web.tako.test"
LOOPBACK_METRICS = 'listen = "127.0.0.1:0"'  # what the harness writes: a port of its own per test server


def started(srv: TakoServer, extra_config: str = "") -> TakoServer:
    if extra_config:
        srv.config.write_text(srv.config.read_text() + "\n" + extra_config + "\n")
    return srv.start()


@pytest.fixture
def server() -> Iterator[TakoServer]:
    srv = TakoServer()
    try:
        yield started(srv, "[server]\nworkers = 1")  # one data-plane process: counts are this process's
    finally:
        srv.cleanup()


def scrape(srv: TakoServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    port = srv.call("hello")["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def fetch(srv: TakoServer, path: str = "/") -> int:
    """The status of one HTTPS request to the app through tako-server's proxy."""
    assert srv.https_port
    return asyncio.run(https_get(srv.https_port, HOST, path)).status


def send(srv: TakoServer, count: int) -> None:
    for _ in range(count):
        assert fetch(srv) == 200


def requests_counted(srv: TakoServer, count: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics once it counts `count` answered requests of the app (counted as each response ends)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def counted() -> bool:
        found.update(scrape(srv))
        return value(found, "tako_http_requests_total", app=APP, status_class="2xx") >= count

    wait_for(counted, timeout=10, what=f"{count} requests of {APP} in /metrics")
    return found


def test_a_scrape_counts_the_apps_requests_and_what_happened_to_it(server: TakoServer) -> None:
    server.deploy(APP, "v1")
    send(server, 7)
    samples = requests_counted(server, 7)
    assert value(samples, "tako_http_requests_total", app=APP, status_class="2xx") == 7
    assert value(samples, "tako_http_requests_total", app=APP, status_class="5xx") == 0
    assert value(samples, "tako_http_request_duration_seconds_count", app=APP) == 7
    assert value(samples, "tako_http_request_duration_seconds_bucket", app=APP, le="+Inf") == 7
    assert value(samples, "tako_http_response_bytes_total", app=APP) > 0
    assert value(samples, "tako_deploys_total", app=APP) == 1
    assert value(samples, "tako_rollbacks_total", app=APP) == 0
    assert value(samples, "tako_instance_starts_total", app=APP) == 1
    assert value(samples, "tako_instances", app=APP, state="healthy") == 1
    assert value(samples, "tako_data_plane_processes") == 1


def test_a_crashed_instance_replaced_counts_as_a_restart(server: TakoServer) -> None:
    server.deploy(APP, "v1")
    (instance,) = server.call("status", app=APP)["instances"]
    os.kill(instance["pid"], signal.SIGKILL)  # a crash: tako-server replaces the instance

    def replaced() -> bool:
        samples = scrape(server)
        return (
            value(samples, "tako_instance_restarts_total", app=APP) == 1
            and value(samples, "tako_instances", app=APP, state="healthy") == 1
        )

    wait_for(replaced, timeout=30, what="the crashed instance replaced, as /metrics counts it")
    assert value(scrape(server), "tako_instance_starts_total", app=APP) == 2


def _record(release: Path, deployed_at: str) -> None:
    """What a deploy writes into the release's app.json: when it ran."""
    meta = json.loads((release / "app.json").read_text())
    meta["release"] = {"version": release.name, "deployed_at": deployed_at}
    (release / "app.json").write_text(json.dumps(meta))


def test_a_deploy_back_to_an_older_release_counts_as_a_rollback(server: TakoServer) -> None:
    for version, at in (("v1", "2026-01-01T10:00:00Z"), ("v2", "2026-01-02T10:00:00Z")):
        _record(make_release(server.data_dir, APP, version), at)
    for version in ("v1", "v2", "v1"):
        path = server.data_dir / "apps" / APP / "releases" / version
        server.call("deploy", app=APP, version=version, path=str(path), routes=[HOST], instances=1)
    samples = scrape(server)
    assert value(samples, "tako_deploys_total", app=APP) == 3
    assert value(samples, "tako_rollbacks_total", app=APP) == 1
    assert value(samples, "tako_instance_starts_total", app=APP) == 3


def test_requests_are_summed_over_the_data_plane_workers() -> None:
    srv = TakoServer()
    try:
        started(srv, "[server]\nworkers = 2")
        srv.deploy(APP, "v1")
        send(srv, 12)  # one connection each: the kernel spreads them over both processes
        samples = requests_counted(srv, 12)
        assert value(samples, "tako_http_requests_total", app=APP, status_class="2xx") == 12
        assert value(samples, "tako_data_plane_processes") == 2
    finally:
        srv.cleanup()


def test_status_shows_the_last_minutes_requests_error_rate_and_p95() -> None:
    srv = TakoServer()
    try:
        # A request slower than the upstream timeout is answered 504 by tako-server: one 5xx.
        started(srv, "[proxy]\nupstream_response_timeout = 0.5")
        srv.deploy(APP, "v1")
        send(srv, 9)
        assert fetch(srv, "/slow?s=2") == 504
        # The 504 too (counted when answered; a data-plane worker's counts reach the figures within 1 s).
        wait_for(lambda: srv.call("status", app=APP)["traffic"]["requests"] >= 10, timeout=10, what="10")
        figures = srv.call("status", app=APP)["traffic"]
        assert figures["requests"] == 10
        assert figures["error_rate"] == pytest.approx(0.1)
        assert figures["requests_per_second"] == pytest.approx(
            10 / max(figures["window_seconds"], 1.0), rel=0.2
        )
        assert 0 < figures["p95_seconds"] <= 10
    finally:
        srv.cleanup()


def test_an_app_without_requests_has_no_rates_yet(server: TakoServer) -> None:
    server.deploy(APP, "v1")
    figures = server.call("status", app=APP)["traffic"]
    assert figures["requests"] == 0
    assert figures["error_rate"] is None and figures["p95_seconds"] is None


def test_count_requests_off_counts_nothing_per_request_and_status_says_nothing() -> None:
    """`[metrics] count_requests = false` (metrics off with `listen = ""`): requests are served and logged,
    /metrics keeps the app's deploys and instances but has no request series, `tako status` no figures."""
    srv = TakoServer()
    try:
        srv.config.write_text(
            srv.config.read_text().replace(LOOPBACK_METRICS, LOOPBACK_METRICS + "\ncount_requests = false")
        )
        started(srv, "[server]\nworkers = 2")
        srv.deploy(APP, "v1")
        send(srv, 6)
        log = srv.data_dir / "apps" / APP / "shared" / "logs" / "access.log"
        wait_for(
            lambda: log.exists() and len(log.read_text().splitlines()) >= 6,
            timeout=10,
            what="6 access lines (the requests were served)",
        )
        samples = scrape(srv)
        assert value(samples, "tako_deploys_total", app=APP) == 1
        assert not [key for key in samples if key[0].startswith("tako_http_request")]
        assert srv.call("status", app=APP).get("traffic") is None
    finally:
        srv.cleanup()


# -- the listener is not a way in ---------------------------------------------------------------------


def raw(srv: TakoServer, data: bytes) -> bytes:
    """What the metrics listener answers to `data` before it closes the connection."""
    port = srv.call("hello")["metrics_port"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b""  # closed on us while we were still sending
        chunks = []
        with contextlib.suppress(ConnectionResetError):  # closed with our request unread: a reset
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def test_the_listener_answers_get_metrics_and_nothing_else(server: TakoServer) -> None:
    assert raw(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    post = raw(server, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET\r\n" in post
    for path in (b"/", b"/metrics/", b"/_tako/status", b"/metrics/../etc/passwd"):
        assert raw(server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    body = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert raw(server, body).startswith(b"HTTP/1.1 400 ")
    assert raw(server, b"SSH-2.0-OpenSSH_9.2\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_an_oversized_request_head_is_cut_off_unanswered(server: TakoServer) -> None:
    head = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 64 * 1024 + b"\r\n\r\n"
    assert raw(server, head) == b""
    assert raw(server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")  # still serving


def test_connections_past_the_limit_are_closed_unanswered(server: TakoServer) -> None:
    port = server.call("hello")["metrics_port"]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for(lambda: raw(server, b"GET /metrics HTTP/1.1\r\n\r\n") == b"", timeout=10, what="a refusal")
    finally:
        for sock in idle:
            sock.close()
    wait_for(
        lambda: raw(server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 "),
        timeout=10,
        what="answers again once the idle connections are gone",
    )


def test_an_empty_listen_turns_the_listener_off() -> None:
    srv = TakoServer()
    try:
        srv.config.write_text(srv.config.read_text().replace(LOOPBACK_METRICS, 'listen = ""'))
        srv.start()
        assert srv.call("hello")["metrics_port"] is None
    finally:
        srv.cleanup()


def test_a_listen_that_is_no_address_is_refused_with_the_fix() -> None:
    srv = TakoServer()
    try:
        srv.config.write_text(srv.config.read_text().replace(LOOPBACK_METRICS, 'listen = "9898"'))
        with pytest.raises(AssertionError) as failed:
            srv.start(timeout=20)
        assert "metrics.listen: expected HOST:PORT" in str(failed.value)
    finally:
        srv.cleanup()


def test_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound without SO_REUSEPORT: nobody may share it
        taken.listen(1)
        port = taken.getsockname()[1]
        srv = TakoServer()
        try:
            text = srv.config.read_text().replace(LOOPBACK_METRICS, f'listen = "127.0.0.1:{port}"')
            srv.config.write_text(text)
            with pytest.raises(AssertionError) as failed:
                srv.start(timeout=20)
            assert f"cannot listen for metrics on 127.0.0.1:{port}: the port is already in use" in str(
                failed.value
            )
        finally:
            srv.cleanup()


def test_a_hand_over_keeps_the_fixed_metrics_port_answering() -> None:
    """The old tako-server frees the address as it stops accepting; the successor listens on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = TakoServer()
    successor = 0
    try:
        srv.config.write_text(
            srv.config.read_text().replace(LOOPBACK_METRICS, f'listen = "127.0.0.1:{port}"')
        )
        srv.start()
        srv.deploy(APP, "v1")
        before = srv.call("hello")["pid"]
        done = request_handover(srv)
        assert done.returncode == 0, f"{done.stderr}\n{srv.log()}"
        successor = srv.call("hello")["pid"]
        assert successor != before and srv.call("hello")["metrics_port"] == port
        assert srv.proc is not None
        wait_for(lambda: srv.proc.poll() is not None, timeout=60, what="the old tako-server to exit")
        assert value(scrape(srv), "tako_instances", app=APP, state="healthy") == 1
    finally:
        if successor:
            stop_pid(successor)
        srv.cleanup()
