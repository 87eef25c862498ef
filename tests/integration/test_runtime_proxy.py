"""The runtime's promises observed as a user sees them, through tako-server's HTTPS proxy under load:
zero failed requests in rolling updates, rollbacks and reloads; cold starts without 503; idle stop that
never cuts a request; restart and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.support.server_process import (
    ControlError,
    LoadResult,
    TakoServer,
    get,
    https_get,
    make_release,
    run_load,
    wait_for,
    websocket,
)

pytestmark = pytest.mark.integration

HOST = "web.tako.test"


@pytest.fixture
async def server() -> AsyncIterator[TakoServer]:
    srv = TakoServer(app_settings={"healthy_timeout": 3.0})
    try:
        await asyncio.to_thread(srv.start)
        yield srv
    finally:
        await asyncio.to_thread(srv.cleanup)


async def under_load(
    server: TakoServer, action: Callable[[], object], *, tail: int = 100, **load_kw: Any
) -> tuple[object, LoadResult]:
    """Run `action` (blocking, in a thread) while clients send requests continuously; keep the load
    going until `tail` more answers arrived after the action finished (counted, not timed)."""
    assert server.https_port
    stop = asyncio.Event()
    result = LoadResult()
    load = asyncio.create_task(run_load(server.https_port, HOST, stop, result=result, **load_kw))
    try:
        outcome: object = await asyncio.to_thread(action)
    except Exception as exc:  # the action's error is part of the outcome
        outcome = exc
    target = len(result.responses) + tail
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(result.responses) < target and not result.failures() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await load
    return outcome, result


def versions_seen(result: LoadResult) -> list[str]:
    """The distinct versions in order of first appearance."""
    seen: list[str] = []
    for r in result.responses:
        v = r.body.split()[0] if r.body else ""
        if not seen or seen[-1] != v:
            seen.append(v)
    return seen


async def test_status_page_lists_apps(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    resp = await https_get(server.https_port, HOST, "/_tako/status")  # type: ignore[arg-type]
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert doc["apps"][0]["app"] == "web" and doc["apps"][0]["version"] == "v1"
    assert doc["apps"][0]["instances"][0]["healthy"] is True
    status, body = get(server.http_port, "/_tako/status")  # type: ignore[arg-type]
    assert status == 200 and json.loads(body)["healthy"] is True
    assert (await https_get(server.https_port, HOST)).body.startswith("version=v1")  # type: ignore[arg-type]


async def test_rolling_update_under_load_has_no_failed_request(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=3)
    outcome, result = await under_load(
        server, lambda: server.deploy("web", "v2", instances=3), keepalive=12, fresh=3
    )
    assert not isinstance(outcome, Exception), outcome
    assert result.failures() == []
    assert len(result.responses) >= 200
    # Responses switch from v1 to v2 (interleaved while both serve), and end on v2.
    first_v2 = next(i for i, r in enumerate(result.responses) if r.body.startswith("version=v2"))
    assert result.responses[0].body.startswith("version=v1")
    assert all(r.body.startswith("version=v2") for r in result.responses[-50:])
    assert first_v2 > 0


@pytest.mark.parametrize(
    ("env", "cause"),
    [
        ({"CRASH_AT_BOOT": "1"}, "boom: cannot boot"),
        ({"NEVER_HEALTHY": "1"}, "did not answer /_tako/status"),
        ({"CRASH_AFTER_REQUESTS": "1"}, "exited with status 4"),
        ({"CRASH_AT_BOOT_FROM": "2"}, "boom: cannot boot"),
    ],
    ids=["exits-at-boot", "never-healthy", "healthy-then-crashes", "second-instance-fails"],
)
async def test_broken_release_under_load_keeps_v1_serving(
    server: TakoServer, env: dict[str, str], cause: str
) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=2)
    outcome, result = await under_load(server, lambda: server.deploy("web", "v2", instances=2, env=env))
    assert isinstance(outcome, ControlError) and cause in outcome.message
    assert result.failures() == []
    status = await asyncio.to_thread(server.call, "status", app="web")
    assert status["version"] == "v1" and cause in status["last_error"]
    assert [i["version"] for i in status["instances"]] == ["v1", "v1"]
    assert all(i["healthy"] for i in status["instances"])
    if "CRASH_AT_BOOT_FROM" in env:
        # v2's first instance served for a moment before the second one failed and v1 was restored.
        assert result.responses[-1].body.startswith("version=v1")
        assert "rolling update to v2 failed; v1 keeps serving" in server.app_log("web")
    else:
        assert {r.body.split()[0] for r in result.responses} == {"version=v1"}


async def test_reload_applies_env_under_load(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=2, env={"GREETING": "hello"})
    make_release(server.data_dir, "web", "v1", {"GREETING": "bonjour"})
    outcome, result = await under_load(server, lambda: server.call("reload", app="web"), path="/env/GREETING")
    assert not isinstance(outcome, Exception), outcome
    assert result.failures() == []
    assert versions_seen(result)[-1] == "bonjour"
    assert result.responses[0].body == "hello"


async def test_kill_9_instance_is_replaced_and_serves_again(server: TakoServer) -> None:
    data = await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    os.kill(data["instances"][0]["pid"], signal.SIGKILL)

    def replaced() -> bool:
        insts = server.call("status", app="web")["instances"]
        return bool(insts) and insts[0]["id"] != data["instances"][0]["id"] and insts[0]["healthy"]

    await asyncio.to_thread(wait_for, replaced)
    resp = await https_get(server.https_port, HOST)  # type: ignore[arg-type]
    assert resp.status == 200 and resp.body.startswith("version=v1")


async def test_a_busy_instance_stays_in_rotation_while_it_answers_but_not_once_it_stops(
    server: TakoServer,
) -> None:
    # Its health probes answer late, as a new connection's do at an app saturated by traffic. While it
    # answers the proxied requests (through the main process and the data-plane workers alike) that is a
    # busy instance, and it keeps serving; once nothing answers, the same late probes take it out.
    slow = server.base / "slow-health"
    data = await asyncio.to_thread(server.deploy, "web", "v1", env={"SLOW_HEALTH_WHEN_EXISTS": str(slow)})
    inst = data["instances"][0]["id"]

    def states() -> list[str]:
        return [str(i["state"]) for i in server.call("status", app="web")["instances"] if i["id"] == inst]

    def late_probes_under_load() -> list[list[str]]:
        slow.touch()
        seen = []
        deadline = time.monotonic() + 5  # five probes at the default 1 s interval, each 3 s late
        while time.monotonic() < deadline:
            seen.append(states())
            time.sleep(0.1)
        return seen

    seen, result = await under_load(server, late_probes_under_load)
    assert not result.failures() and len(result.responses) > 100
    assert all(s == ["healthy"] for s in seen)  # never out of rotation
    metrics = await asyncio.to_thread(_metrics_text, server)
    assert _metric(metrics, 'tako_health_checks_late_busy_total{app="web"}') >= 3
    # No traffic: the late probes meet no answers and take it out of rotation; on time again, it is back.
    await asyncio.to_thread(wait_for, lambda: states() == ["unhealthy"], what="out of rotation")
    slow.unlink()
    await asyncio.to_thread(wait_for, lambda: states() == ["healthy"], what="back in rotation")


def _metrics_text(server: TakoServer) -> str:
    port = server.call("hello")["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} is not in the metrics:\n{text[:2000]}")


async def test_on_demand_burst_of_first_requests_gets_no_503(server: TakoServer) -> None:
    data = await asyncio.to_thread(server.deploy, "web", "v1", instances=0, env={"BOOT_DELAY": "0.3"})
    assert data["state"] == "idle" and data["instances"] == []
    responses = await asyncio.gather(*(https_get(server.https_port, HOST) for _ in range(40)))  # type: ignore[arg-type]
    assert [r.status for r in responses] == [200] * 40
    status = await asyncio.to_thread(server.call, "status", app="web")
    assert len(status["instances"]) == 1  # one cold start served the whole queue


async def test_idle_stop_waits_for_in_flight_requests(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=0, idle_timeout=1)
    slow = asyncio.create_task(https_get(server.https_port, HOST, "/slow?s=3"))  # type: ignore[arg-type]

    def running() -> bool:
        return bool(server.call("status", app="web")["instances"])

    await asyncio.to_thread(wait_for, running)
    first = (await asyncio.to_thread(server.call, "status", app="web"))["instances"][0]["id"]
    # The request outlives idle_timeout three times over and is not cut.
    resp = await slow
    assert resp.status == 200 and resp.body.startswith("slow v1")
    assert [i["id"] for i in (await asyncio.to_thread(server.call, "status", app="web"))["instances"]] in (
        [first],
        [],
    )

    def stopped() -> bool:
        return server.call("status", app="web")["instances"] == []

    await asyncio.to_thread(wait_for, stopped, 15)
    assert "idle for 1 s: stopping 1 instance(s)" in server.app_log("web")
    # And it wakes again.
    assert (await https_get(server.https_port, HOST)).status == 200  # type: ignore[arg-type]


async def test_failed_cold_start_answers_503_and_records_the_error(server: TakoServer) -> None:
    # Deploy a good release, then break its .env so the next cold start fails.
    await asyncio.to_thread(server.deploy, "web", "v1", instances=0)
    make_release(server.data_dir, "web", "v1", {"CRASH_AT_BOOT": "1"})
    await asyncio.to_thread(server.call, "reload", app="web")
    resp = await https_get(server.https_port, HOST)  # type: ignore[arg-type]
    assert resp.status == 503
    status = await asyncio.to_thread(server.call, "status", app="web")
    assert "boom: cannot boot" in status["last_error"]


async def test_sigterm_drains_in_flight_requests(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    slow = asyncio.create_task(https_get(server.https_port, HOST, "/slow?s=1.5"))  # type: ignore[arg-type]

    def in_flight() -> bool:
        return server.call("status", app="web")["instances"][0]["inflight"] == 1

    await asyncio.to_thread(wait_for, in_flight)
    code = await asyncio.to_thread(server.stop)
    resp = await slow
    assert resp.status == 200 and resp.body.startswith("slow v1")
    assert code == 0
    assert server.instance_processes() == []


async def test_restart_after_sigkill_serves_without_redeploy(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=2)
    await asyncio.to_thread(server.deploy, "lazy", "v1", instances=0, routes=("lazy.tako.test",))
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.start)
    resp = await https_get(server.https_port, HOST)  # type: ignore[arg-type]
    assert resp.status == 200 and resp.body.startswith("version=v1")
    lazy = await https_get(server.https_port, "lazy.tako.test")  # type: ignore[arg-type]
    assert lazy.status == 200


async def test_plain_http_redirects_routed_hosts_and_404s_others(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    assert get(server.http_port, "/", host="nope.tako.test")[0] == 404  # type: ignore[arg-type]
    assert get(server.http_port, "/x", host=HOST)[0] == 301  # type: ignore[arg-type]


async def test_idle_stop_never_cuts_an_open_websocket(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=0, idle_timeout=1)
    await asyncio.to_thread(
        server.deploy, "witness", "v1", instances=0, idle_timeout=1, routes=("w.tako.test",)
    )
    async with websocket(server.https_port, HOST) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        # The witness app, woken after the WebSocket opened, is stopped by the idle reaper: proof that
        # the reaper ran past the idle timeout while the WebSocket stayed open.
        assert (await https_get(server.https_port, "w.tako.test")).status == 200  # type: ignore[arg-type]

        def witness_stopped() -> bool:
            return server.call("status", app="witness")["instances"] == []

        await asyncio.to_thread(wait_for, witness_stopped, 15)
        status = await asyncio.to_thread(server.call, "status", app="web")
        assert len(status["instances"]) == 1 and status["instances"][0]["inflight"] == 1
        await ws.send("still here")
        assert await ws.recv() == "still here"

    def web_stopped() -> bool:
        return server.call("status", app="web")["instances"] == []

    await asyncio.to_thread(wait_for, web_stopped, 15)


async def test_always_on_app_broken_at_restart_is_retried_and_status_says_503(server: TakoServer) -> None:
    await asyncio.to_thread(server.deploy, "web", "v1", instances=1)
    await asyncio.to_thread(server.stop)  # a stop, not a crash: a killed server's instance would be adopted
    make_release(server.data_dir, "web", "v1", {"CRASH_AT_BOOT": "1"})
    await asyncio.to_thread(server.start)

    def first_start_failed() -> Any:
        status = server.call("status", app="web")
        return status["last_error"] and status

    # The instances start behind the open listeners: wait for the first failed start.
    status = await asyncio.to_thread(wait_for, first_start_failed, 30)
    assert "boom: cannot boot" in status["last_error"]
    code, body = get(server.http_port, "/_tako/status")  # type: ignore[arg-type]
    assert code == 503 and json.loads(body)["healthy"] is False
    # Fixing the release is enough: the supervisor keeps retrying with backoff.
    make_release(server.data_dir, "web", "v1", {})

    def healthy() -> bool:
        return get(server.http_port, "/_tako/status")[0] == 200  # type: ignore[arg-type]

    await asyncio.to_thread(wait_for, healthy, 30)
    assert (await https_get(server.https_port, HOST)).status == 200  # type: ignore[arg-type]
