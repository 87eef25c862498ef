"""Access log lines as `AccessLog` formats them: valid JSON whatever the request held (quotes, backslashes,
control characters and non-ASCII bytes in paths, queries, hosts and ids), with the figures the proxy
measured and the time of the request's start."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tako.server.observe.access_log import AccessLog, Batch, Entry
from tako.server.proxy import native

HOSTILE = ['"', "\\", '\\"', "\x00", "\x1f", "\x7f", "é", "\u2028", "</script>", '"}{"x":1']


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def entry(loop: asyncio.AbstractEventLoop, **fields: Any) -> Entry:
    started = native.now()  # the proxy's clock
    values: dict[str, Any] = {  # in the order of access_log.Entry
        "app": "web",
        "host": "web.tako.test",
        "method": b"GET",
        "started": started,
        "ended": started + 0.0123456,
        "sent_at": started + 0.002,
        "status": 200,
        "url": b"/cart?page=2",
        "bytes_in": 40,
        "bytes_out": 187,
        "request_id": b"3f9c2a1be07d4c55-1a",
        "instance": "a1b2c3d4",
        "client": b"127.0.0.1",
        "tls": True,
        "websocket": False,
    }
    values.update(fields)
    return tuple(values.values())


def lines(loop: asyncio.AbstractEventLoop, *entries: Entry, query: bool = False) -> list[dict[str, Any]]:
    batches: list[Batch] = []
    log = AccessLog(loop, batches.append, query=query)
    for one in entries:
        log.add(one)
    log.close()
    (batch,) = batches
    return [json.loads(line) for text in batch.values() for line in text.splitlines()]


def test_a_line_holds_what_the_proxy_measured(loop: asyncio.AbstractEventLoop) -> None:
    before = time.time()
    (line,) = lines(loop, entry(loop))
    assert line == {
        "time": line["time"],
        "app": "web",
        "host": "web.tako.test",
        "method": "GET",
        "path": "/cart",
        "status": 200,
        "bytes_in": 40,
        "bytes_out": 187,
        "duration_ms": 12.346,
        "upstream_ms": 10.346,
        "instance": "a1b2c3d4",
        "client": "127.0.0.1",
        "request_id": "3f9c2a1be07d4c55-1a",
        "tls": True,
    }
    stamp = time.strptime(line["time"][:19], "%Y-%m-%dT%H:%M:%S")
    assert line["time"][19] == "." and line["time"].endswith("Z") and len(line["time"]) == 24
    assert abs(time.mktime(stamp) - time.timezone - before) < 2


def test_no_instance_no_id_a_websocket_and_a_query(loop: asyncio.AbstractEventLoop) -> None:
    plain, tunnel = lines(
        loop,
        entry(loop, sent_at=0.0, instance=None, request_id=None, tls=False),
        entry(loop, status=101, url=b"/ws?room=1", websocket=True),
        query=True,
    )
    assert "upstream_ms" not in plain and plain["instance"] is None and plain["request_id"] is None
    assert plain["tls"] is False and plain["query"] == "page=2" and "websocket" not in plain
    assert tunnel["websocket"] is True and tunnel["status"] == 101 and tunnel["query"] == "room=1"


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_text_stays_valid_json_and_reads_back(loop: asyncio.AbstractEventLoop, bad: str) -> None:
    raw = bad.encode("utf-8")
    url = b"/a" + raw + b"?q=" + raw
    (line,) = lines(
        loop,
        entry(loop, url=url, host="h" + bad, request_id=b"id" + raw, client=b"c" + raw, instance="i" + bad),
        query=True,
    )
    # Bytes from the wire are read as latin-1 (one character per byte), so every byte survives.
    assert line["path"] == "/a" + raw.decode("latin-1") and line["query"] == "q=" + raw.decode("latin-1")
    assert line["host"] == "h" + bad and line["instance"] == "i" + bad
    assert line["request_id"] == "id" + raw.decode("latin-1") and line["client"] == "c" + raw.decode(
        "latin-1"
    )


def test_every_byte_in_a_path_and_an_id_reads_back(loop: asyncio.AbstractEventLoop) -> None:
    # Each byte on its own, so the check for what needs escaping is tried at every edge (controls, space,
    # quote, backslash, DEL, non-ASCII), compiled or as Python.
    entries = [entry(loop, url=b"/" + bytes([n]), request_id=bytes([n])) for n in range(256) if n != ord("?")]
    read = lines(loop, *entries)
    assert [(line["path"], line["request_id"]) for line in read] == [
        ("/" + chr(n), chr(n)) for n in range(256) if n != ord("?")
    ]


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b'%\x00\xfe"\\'])
def test_invalid_utf8_from_the_wire_stays_valid_json(loop: asyncio.AbstractEventLoop, raw: bytes) -> None:
    """Bytes no UTF-8 decoder accepts (a lone byte, a cut sequence, a surrogate, an overlong slash) in the
    target and the id: the line is valid UTF-8 JSON (what a log reader gets), every byte kept as latin-1."""
    batches: list[Batch] = []
    log = AccessLog(loop, batches.append, query=True)
    log.add(entry(loop, url=b"/p" + raw + b"?" + raw, request_id=raw))
    log.close()
    (written,) = batches[0].values()
    line = json.loads(written.decode("utf-8"))  # as written to the file, as read back
    assert line["path"] == "/p" + raw.decode("latin-1") and line["query"] == raw.decode("latin-1")
    assert line["request_id"] == raw.decode("latin-1")


def test_durations_are_milliseconds_with_three_decimals(loop: asyncio.AbstractEventLoop) -> None:
    started = native.now()
    (line,) = lines(loop, entry(loop, started=started, ended=started + 2.0000004, sent_at=started + 0.0015))
    assert line["duration_ms"] == 2000.0 and line["upstream_ms"] == 1998.5


def test_each_app_gets_its_own_lines_in_order(loop: asyncio.AbstractEventLoop) -> None:
    batches: list[Batch] = []
    log = AccessLog(loop, batches.append)
    for n, app in enumerate(["web", "api", "web"]):
        log.add(entry(loop, app=app, bytes_out=n))
    log.close()
    (batch,) = batches
    assert [json.loads(x)["bytes_out"] for x in batch["web"].splitlines()] == [0, 2]
    assert [json.loads(x)["bytes_out"] for x in batch["api"].splitlines()] == [1]
    assert all(text.endswith(b"\n") for text in batch.values())
