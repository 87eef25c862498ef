"""HTTP/2 on the HTTPS listener: real clients (httpx, curl, h2load) and raw frames (the `h2` package)
against a real `ProxyServer` and a real HTTP/1.1 upstream on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import h2.errors
import h2.events
import h2.settings
import httpx
import pytest
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from tests.support.h2_client import H2Client, RawFrames
from tests.support.proxy_harness import ProxyHarness, one_app_proxy

from tako.config.server import ProxySettings
from tako.server.proxy import h2 as proxy_h2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.uvloop,
    pytest.mark.skipif(not proxy_h2.available(), reason="the libnghttp2 binding is not built"),
]

HOST = "a.tako.test"


async def _client(p: ProxyHarness, **kwargs: object) -> H2Client:
    return await H2Client.connect(p.https_port, p.client_context(), HOST, **kwargs)  # type: ignore[arg-type]


async def test_httpx_gets_http2_and_the_app_sees_http11_with_host_cookies_and_forwarding(
    tmp_path: Path,
) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        async with p.https(http2=True) as client:
            r = await client.get(
                "/echo?x=1",
                headers=[("host", HOST), ("cookie", "a=1"), ("cookie", "b=2"), ("x-custom", "yes")],
                extensions={"sni_hostname": HOST},
            )
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        seen = r.json()
        assert seen["version"] == "HTTP/1.1" and seen["target"] == "/echo?x=1"
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["host"].startswith(HOST)
        assert headers["cookie"] == "a=1; b=2"
        assert headers["x-custom"] == "yes"
        assert headers["x-forwarded-proto"] == "https"
        assert r.headers["x-request-id"] == headers["x-request-id"]


async def test_many_streams_on_one_connection_bodies_both_ways(tmp_path: Path) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: several windows' worth each way
    async with one_app_proxy(tmp_path) as (p, _up), p.https(http2=True) as client:

        async def one(i: int) -> httpx.Response:
            return await client.post(
                "/sink", content=body, headers={"host": HOST}, extensions={"sni_hostname": HOST}
            )

        answers = await asyncio.gather(*(one(i) for i in range(20)))
        big = await client.get("/bytes/3000000", headers={"host": HOST}, extensions={"sni_hostname": HOST})
        chunked = await client.get(
            "/chunked/100000", headers={"host": HOST}, extensions={"sni_hostname": HOST}
        )
    digest = hashlib.sha256(body).hexdigest()
    assert all(
        r.http_version == "HTTP/2" and r.json() == {"received": len(body), "sha256": digest} for r in answers
    )
    assert big.status_code == 200 and len(big.content) == 3000000
    assert chunked.status_code == 200 and len(chunked.content) == 100000


async def test_body_without_content_length_trailers_dropped(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":path", b"/sink"),
                (b":scheme", b"https"),
                (b":authority", HOST.encode()),
            ],
        )
        for _ in range(4):
            c.conn.send_data(sid, b"x" * 15000)
        c.conn.send_headers(sid, [(b"x-trailer", b"ignored")], end_stream=True)
        c.flush()
        await c.receive_until(lambda: c.ended(sid))
        assert c.response(sid)[b":status"] == b"200"
        assert json.loads(bytes(c.bodies[sid]))["received"] == 60000
        await c.close()


async def test_head_204_304_and_interim_responses_have_no_body(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        head = c.request("/bytes/1000", HOST, method="HEAD")
        no_content = c.request("/status/204", HOST)
        not_modified = c.request("/status/304", HOST)
        interim = c.request("/interim", HOST)
        await c.receive_until(lambda: all(c.ended(s) for s in (head, no_content, not_modified, interim)))
        assert c.response(head)[b"content-length"] == b"1000" and head not in c.bodies
        assert c.response(no_content)[b":status"] == b"204" and no_content not in c.bodies
        assert c.response(not_modified)[b":status"] == b"304" and not_modified not in c.bodies
        informational = c.of(h2.events.InformationalResponseReceived, interim)
        assert informational and dict(informational[0].headers)[b":status"] == b"103"
        assert json.loads(bytes(c.bodies[interim])) == {"interim": True}
        for s in (head, no_content, not_modified, interim):
            names = list(c.response(s))
            assert all(n == n.lower() for n in names)
            assert b"connection" not in names and b"transfer-encoding" not in names
        assert c.goaway() is None
        await c.close()


async def test_unrouted_host_and_local_errors_answer_on_the_stream(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        unknown = c.request("/", "b.tako.test")
        status = c.request("/_tako/status", HOST)
        await c.receive_until(lambda: c.ended(unknown) and c.ended(status))
        assert c.response(unknown)[b":status"] == b"404"
        assert c.response(status)[b":status"] == b"200"
        await c.close()


async def test_connection_specific_request_header_resets_the_stream(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, up):
        c = await _client(p, validate=False)
        bad = c.request("/", HOST, extra=[(b"connection", b"keep-alive")])
        good = c.request("/", HOST)
        await c.receive_until(lambda: c.ended(bad) and c.ended(good))
        reset = c.of(h2.events.StreamReset, bad)
        assert reset and reset[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert c.response(good)[b":status"] == b"200"
        assert up.requests == 1
        await c.close()


async def test_header_list_over_the_limit_is_431_and_not_forwarded(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path, ProxySettings(max_header_bytes=8192)) as (p, up):
        c = await _client(p, validate=False)
        big = c.request("/", HOST, extra=[(b"x-big-%d" % i, b"v" * 1000) for i in range(20)])
        await c.receive_until(lambda: c.ended(big))
        assert c.response(big)[b":status"] == b"431"
        assert up.requests == 0
        ok = c.request("/", HOST)
        await c.receive_until(lambda: c.ended(ok))
        assert c.response(ok)[b":status"] == b"200"
        await c.close()


async def test_a_large_header_block_then_a_small_one_each_reach_the_app_as_sent(tmp_path: Path) -> None:
    # The binding keeps its buffers for a connection's next blocks and frees those a large block grew.
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(20)] + [
            (b"cookie", b"c%d=%s" % (i, b"w" * 3000)) for i in range(3)
        ]
        for extra in (big, [(b"cookie", b"small=1"), (b"x-small", b"yes")]):
            sid = c.request("/echo", HOST, extra=extra)
            await c.receive_until(lambda sid=sid: c.ended(sid))  # type: ignore[misc]
            seen = {k.lower(): v for k, v in json.loads(bytes(c.bodies[sid]))["headers"]}
            expected = {k.decode(): v.decode() for k, v in extra if k != b"cookie"}
            expected["cookie"] = "; ".join(v.decode() for k, v in extra if k == b"cookie")
            assert {k: seen.get(k) for k in expected} == expected
            assert seen["host"].startswith(HOST) and ("x-big-0" in seen) == (extra is big)
        await c.close()


def _headers_block(c: H2Client, stream_id: int, path: bytes = b"/slow/5") -> bytes:
    return c.conn.encoder.encode(
        [(b":method", b"GET"), (b":path", path), (b":scheme", b"https"), (b":authority", HOST.encode())]
    )


async def test_streams_past_the_concurrency_limit_are_refused(tmp_path: Path) -> None:
    limit = proxy_h2.connection_module().MAX_STREAMS
    async with one_app_proxy(tmp_path) as (p, _up):
        # Opened before the client has even read the server's SETTINGS: the streams past the limit are
        # refused (the client may retry them), the others answered.
        c = await _client(p, validate=False)
        raw = c.raw = RawFrames()
        ids = [2 * i + 1 for i in range(limit + 1)]
        c.send_raw(
            [HeadersFrame(s, _headers_block(c, s, b"/"), flags=["END_HEADERS", "END_STREAM"]) for s in ids]
        )
        await c.receive_until(lambda: all(s in raw.ended for s in ids))
        assert raw.resets == {ids[-1]: h2.errors.ErrorCodes.REFUSED_STREAM}
        assert all(raw.headers[s][b":status"] == b"200" for s in ids[:-1])
        assert raw.goaway() is None
        await c.close()
        # After acknowledging the limit, exceeding it is a protocol error: GOAWAY.
        c = await _client(p, validate=False)
        await c.receive_until(lambda: bool(c.of(h2.events.RemoteSettingsChanged)))
        assert c.conn.remote_settings.max_concurrent_streams == limit
        slow = [HeadersFrame(s, _headers_block(c, s), flags=["END_HEADERS", "END_STREAM"]) for s in ids]
        c.send_raw(slow)
        await c.receive_until(lambda: c.goaway() is not None)
        assert c.goaway().error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR  # type: ignore[union-attr]
        await c.close()


async def test_rapid_reset_is_bounded_then_goaway(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p, validate=False)
        frames = []
        n = 4 * proxy_h2.connection_module().RESET_BURST
        for i in range(n):
            sid = 2 * i + 1
            frames.append(HeadersFrame(sid, _headers_block(c, sid), flags=["END_HEADERS", "END_STREAM"]))
            frames.append(RstStreamFrame(sid, error_code=8))
        c.send_raw(frames)
        await c.receive_until(lambda: c.goaway() is not None)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code != 0
        assert goaway.last_stream_id < 2 * n  # streams after the GOAWAY's were never started
        await c.close()


async def test_continuation_flood_ends_the_connection(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, up):
        c = await _client(p, validate=False)
        block = _headers_block(c, 1, b"/")
        frames: list[Frame] = [HeadersFrame(1, block, flags=[])]
        frames += [ContinuationFrame(1, c.conn.encoder.encode([(b"x-a", b"b" * 100)])) for _ in range(1000)]
        c.send_raw(frames)
        await c.receive_until(lambda: c.goaway() is not None)
        assert c.goaway() is not None and c.goaway().error_code != 0  # type: ignore[union-attr]
        assert up.requests == 0
        await c.close()


async def test_ping_and_settings_floods_from_a_client_that_reads_nothing_end_the_connection(
    tmp_path: Path,
) -> None:
    # Either bound may end it: 1000 unsent acknowledgements (GOAWAY), or the socket full for
    # keepalive_timeout (dropped).
    async with one_app_proxy(tmp_path, ProxySettings(keepalive_timeout=1)) as (p, _up):
        for flood in (PingFrame(0, opaque_data=b"12345678"), SettingsFrame(0, settings={4: 65535})):
            c = await _client(p, validate=False)
            data = flood.serialize() * 5000
            # The client never reads: the acknowledgements pile up at the server, which gives up.
            deadline = asyncio.get_running_loop().time() + 20
            closed = False
            while not closed:
                assert asyncio.get_running_loop().time() < deadline, "the flood was not stopped"
                try:
                    c.writer.write(data)
                    await asyncio.wait_for(c.writer.drain(), 0.5)
                except (ConnectionError, OSError):
                    closed = True
                except TimeoutError:
                    closed = c.reader.at_eof() or c.writer.is_closing()
                    if not closed:
                        closed = await _server_closed(c)
            await c.close()


async def _server_closed(c: H2Client) -> bool:
    """Whether the server has closed its side (reading what it sent until EOF or a pause)."""
    try:
        while True:
            data = await asyncio.wait_for(c.reader.read(1 << 20), 0.5)
            if not data:
                return True
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True


async def test_a_client_holding_a_zero_window_is_dropped(tmp_path: Path) -> None:
    settings = ProxySettings(keepalive_timeout=0.5, response_buffer_bytes=16384)
    async with one_app_proxy(tmp_path, settings) as (p, _up):
        c = await _client(p, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        sid = c.request("/bytes/1000000", HOST)
        await c.receive_until(lambda: c.ended(sid) or c.closed, timeout=20)
        reset = c.of(h2.events.StreamReset, sid)
        assert reset or c.closed
        assert len(c.bodies.get(sid, b"")) == 0
        await c.close()


@pytest.mark.parametrize("handed_over", [False, True], ids=["shutdown", "hand-over"])
async def test_shutdown_finishes_streams_in_progress_and_sends_goaway(
    tmp_path: Path, handed_over: bool
) -> None:
    async with one_app_proxy(tmp_path) as (p, up):
        c = await _client(p)
        sid = c.request("/slow/0.5", HOST)
        await c.receive_until(lambda: up.requests == 1)
        raw = c.raw = RawFrames()
        shutdown = asyncio.ensure_future(p.server.shutdown(10, handed_over=handed_over))
        await c.receive_until(lambda: c.closed)
        await shutdown
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == sid
        assert raw.headers[sid][b":status"] == b"200" and sid in raw.ended
        assert json.loads(raw.bodies[sid]) == {"slept": 0.5}
        await c.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_http2(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        ca = tmp_path / "ca.pem"
        p.ca.cert_pem.write_to_path(str(ca))
        proc = await asyncio.create_subprocess_exec(
            "curl", "--http2", "-sS", "--cacert", str(ca), "--resolve", f"{HOST}:{p.https_port}:127.0.0.1",
            "-w", "\\n%{http_version} %{http_code}", "-d", "hello", f"https://{HOST}:{p.https_port}/sink",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        body, _, tail = out.decode().rpartition("\n")
        assert tail == "2 200", (out, err)
        assert json.loads(body)["received"] == 5


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (Debian: nghttp2-client)")
async def test_h2load_all_requests_succeed(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        proc = await asyncio.create_subprocess_exec(
            "h2load", "-n", "400", "-c", "4", "-m", "20", "-H", f":authority: {HOST}",
            f"https://127.0.0.1:{p.https_port}/bytes/1000",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert "400 succeeded, 0 failed, 0 errored" in text, text
        assert "Application protocol: h2" in text, text


async def test_requests_are_counted_and_a_reset_stream_counts_as_client_gone(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        sids = [c.request("/", HOST) for _ in range(5)]
        slow = c.request("/slow/5", HOST)
        await c.receive_until(lambda: all(c.ended(s) for s in sids) and _up.requests == 6)
        c.conn.reset_stream(slow)
        c.flush()
        counters = p.server.traffic.for_app("a")
        await c.receive_until(lambda: counters.in_flight == 0)
        assert counters.requests[1] == 5  # 2xx
        assert counters.requests[3] == 1  # the reset one: 499
        await c.close()


async def test_a_slow_client_holds_the_response_at_the_instance_and_then_gets_it_whole(
    tmp_path: Path,
) -> None:
    size = 20_000_000
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        c.auto_ack_data = False
        sid = c.request(f"/bytes/{size}", HOST)

        def upstream_paused() -> bool:
            # The stream's connection stopped reading the instance (what a user sees: the app's writes
            # block instead of the proxy buffering the whole response).
            for conn in p.server.connections:
                cycle = getattr(conn, "cycle", None)
                if cycle is not None and cycle.uconn is not None and conn.write_paused:
                    return not cycle.uconn.transport.is_reading()
            return False

        await c.receive_until(lambda: bool(c.of(h2.events.ResponseReceived, sid)))
        await c.receive_until(upstream_paused)
        c.auto_ack_data = True
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        c.conn.increment_flow_control_window(1 << 30)
        c.flush()
        await c.receive_until(lambda: c.ended(sid), timeout=60)
        assert len(c.bodies[sid]) == size
        await c.close()


async def test_an_upload_to_a_slow_instance_is_held_by_flow_control_and_arrives_whole(tmp_path: Path) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, eight stream windows
    async with (
        one_app_proxy(tmp_path, ProxySettings(request_buffering=False)) as (p, _up),
        p.https(http2=True) as client,
    ):
        r = await client.post(
            "/sink?slow=1", content=body, headers={"host": HOST}, extensions={"sni_hostname": HOST}
        )
    assert r.http_version == "HTTP/2"
    assert r.json() == {"received": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_streams_one_after_another_each_get_their_own_answer(tmp_path: Path) -> None:
    # Later streams reuse the proxy's per-stream state of finished ones: nothing may carry over.
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        steps: list[tuple[str, str, str, bytes | None, bytes, int | None]] = [
            ("HEAD", "/bytes/10", HOST, None, b"200", 0),
            ("GET", "/bytes/10", HOST, None, b"200", 10),
            ("GET", "/bytes/0", HOST, None, b"200", 0),
            ("POST", "/sink", HOST, b"abc", b"200", None),
            ("GET", "/", "b.tako.test", None, b"404", None),
            ("GET", "/status/204", HOST, None, b"204", 0),
            ("GET", "/chunked/5", HOST, None, b"200", 5),
        ]
        for method, path, host, body, status, length in steps * 2:
            sid = c.request(path, host, method=method, body=body)
            await c.receive_until(lambda sid=sid: c.ended(sid))  # type: ignore[misc]
            assert c.response(sid)[b":status"] == status, (method, path)
            if length is not None:
                assert len(c.bodies.get(sid, b"")) == length, (method, path)
        assert json.loads(bytes(c.bodies[7]))["received"] == 3
        assert c.goaway() is None
        await c.close()


async def test_hop_by_hop_response_fields_never_reach_an_http2_client(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        sid = c.request("/hop", HOST)
        await c.receive_until(lambda: c.ended(sid))
        fields = c.response(sid)
        assert fields[b"x-kept"] == b"yes" and bytes(c.bodies[sid]) == b"hop"
        for name in (b"connection", b"keep-alive", b"upgrade", b"x-secret", b"transfer-encoding", b"trailer"):
            assert name not in fields, name
        await c.close()


async def test_a_response_head_of_many_fields_arrives_whole(tmp_path: Path) -> None:
    # The binding submits a usual head from stack space and a larger one (here 60 fields, 7 KB) from the heap.
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        for n in (3, 60):
            sid = c.request(f"/fields/{n}", HOST)
            await c.receive_until(lambda sid=sid: c.ended(sid))  # type: ignore[misc]
            fields = c.response(sid)
            assert [fields.get(b"x-field-%d" % i) for i in range(n)] == [b"v" * 100] * n
            assert bytes(c.bodies[sid]) == b"fields"
        await c.close()


async def test_an_answer_before_the_request_body_ends_the_stream(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path, ProxySettings(max_body_bytes=1000, keepalive_timeout=1)) as (p, up):
        c = await _client(p)
        sid = c.conn.get_next_available_stream_id()
        fields = [
            (b":method", b"POST"),
            (b":path", b"/sink"),
            (b":scheme", b"https"),
            (b":authority", HOST.encode()),
        ]
        c.conn.send_headers(sid, [*fields, (b"content-length", b"5000")])  # the body never comes
        c.flush()
        await c.receive_until(lambda: c.ended(sid))
        assert c.response(sid)[b":status"] == b"413"
        reset = c.of(h2.events.StreamReset, sid)
        assert reset and reset[0].error_code == h2.errors.ErrorCodes.NO_ERROR
        # Nothing is left open: the idle connection is closed after keepalive_timeout.
        await c.receive_until(lambda: c.goaway() is not None)
        assert up.requests == 0
        await c.close()


async def test_fields_new_in_every_response_stay_out_of_the_clients_hpack_table(tmp_path: Path) -> None:
    # x-request-id differs in every response and date every second: kept in the connection's HPACK table
    # each would evict the fields that do repeat (and make every later response cost more to encode).
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        for _ in range(5):
            sid = c.request("/bytes/10", HOST)
            await c.receive_until(lambda sid=sid: c.ended(sid))  # type: ignore[misc]
            assert b"x-request-id" in c.response(sid)
        table = [name for name, _value in c.conn.decoder.header_table.dynamic_entries]
        assert b"x-request-id" not in table and b"date" not in table, table
        await c.close()
