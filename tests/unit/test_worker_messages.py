"""The channel between tako-server and its data-plane workers: every message survives its JSON line
unchanged, goes only one way, and a bad line is refused with the field it got wrong."""

from __future__ import annotations

import json

import pytest

from tako.config.server import ProxySettings
from tako.errors import ProtocolError
from tako.server.workers import messages as wm

WEB = wm.AppRouting(
    name="web",
    routes=("web.test", "web.test/api/*"),
    rotation=(wm.InstanceAddress("a1", "127.0.0.1", 8001), wm.InstanceAddress("a2", "127.0.0.1", 8002)),
    stopped=False,
    request_buffering=False,
    compression=False,
    https=False,
)
TO_WORKER: list[wm.ToWorker] = [
    wm.Configure(
        channel=wm.CHANNEL_VERSION,
        log_level="DEBUG",
        listen="127.0.0.1",
        http_port=80,
        https_port=443,
        data_dir="/opt/tako",
        proxy=ProxySettings(max_body_bytes=0, header_timeout=2.5),
        cold_start_queue=1000,
        cold_start_timeout=30.0,
        drain_timeout=30.0,
    ),
    wm.RoutingSnapshot(version=7, apps=(WEB, wm.AppRouting("cold", ("cold.test",), (), True, True))),
    wm.RoutingSnapshot(version=0, apps=()),
    wm.StatusDocument(code=503, body='{"healthy":false,"apps":[]}'),
    wm.AcmeTokens(tokens={"tok": "tok.thumb"}),
    wm.CertificateStored(name="web.test"),
    wm.WakeFailed(app="web", reason="App web failed to start", status=503, retry_after=5),
    wm.WakeFailed(app="web", reason="App web is stopped", status=503, retry_after=None),
    wm.Stop(timeout=30.0),
]
FROM_WORKER: list[wm.FromWorker] = [
    wm.Ready(channel=wm.CHANNEL_VERSION, pid=1234, http_port=80, https_port=443),
    wm.Report(version=7, counters={"a1": wm.Counters(inflight=2, starts=10), "a2": wm.Counters(0, 3)}),
    wm.Report(version=8, counters={}),
    wm.Wake(app="cold"),
]


@pytest.mark.parametrize("message", TO_WORKER, ids=lambda m: type(m).__name__)
def test_messages_to_a_worker_round_trip(message: wm.ToWorker) -> None:
    line = wm.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["kind"] == message.kind
    assert wm.decode_to_worker(line) == message


@pytest.mark.parametrize("message", FROM_WORKER, ids=lambda m: type(m).__name__)
def test_messages_from_a_worker_round_trip(message: wm.FromWorker) -> None:
    assert wm.decode_from_worker(wm.encode(message)) == message


def test_each_message_goes_one_way() -> None:
    with pytest.raises(ProtocolError, match="unknown kind 'report'"):
        wm.decode_to_worker(wm.encode(wm.Report(version=1, counters={})))
    with pytest.raises(ProtocolError, match="unknown kind 'stop'"):
        wm.decode_from_worker(wm.encode(wm.Stop(timeout=1.0)))


def snapshot_line(**app: object) -> bytes:
    body = {
        "name": "web",
        "routes": ["web.test"],
        "rotation": [],
        "stopped": False,
        "request_buffering": True,
    }
    return json.dumps({"kind": "snapshot", "version": 1, "apps": [{**body, **app}]}).encode()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "message from the main process is not valid JSON"),
        (b'{"version": 1}', 'message from the main process has no "kind" string'),
        (b'{"kind": "snapshot", "apps": []}', "kind 'snapshot' needs field 'version'"),
        (b'{"kind": "snapshot", "version": "1", "apps": []}', "field 'version' must be an integer"),
        (b'{"kind": "stop", "timeout": 1, "now": true}', "kind 'stop' has unknown fields: now"),
        (b'{"kind": "stop", "timeout": true}', "field 'timeout' must be a number"),
        (b'{"kind": "tokens", "tokens": {"t": 1}}', "field \"tokens['t']\" must be a string"),
        (snapshot_line(rotation=[{"key": "a", "host": "h", "port": "80"}]), "'apps[0].rotation[0].port'"),
        (snapshot_line(stopped=1), "field 'apps[0].stopped' must be true or false"),
        (snapshot_line(routes="web.test"), "field 'apps[0].routes' must be a list of strings"),
        (snapshot_line(name=None), "field 'apps[0].name' must be a string"),
        (snapshot_line(extra=1), "field 'apps[0]' has unknown fields: extra"),
    ],
)
def test_a_bad_line_names_what_is_wrong(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        wm.decode_to_worker(line)
    assert message in str(caught.value)


def test_an_oversized_line_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        wm.decode_to_worker(b" " * (wm.MAX_TO_WORKER + 1))


def test_a_peer_of_another_channel_version_is_refused_with_a_hint() -> None:
    wm.check_channel(wm.CHANNEL_VERSION, "the worker")
    with pytest.raises(ProtocolError, match="speaks worker channel version 0") as caught:
        wm.check_channel(0, "the worker")
    assert "restart tako-server" in (caught.value.hint or "")
