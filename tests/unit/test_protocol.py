"""The control protocol codec: typed round trips and clear errors for bad lines."""

import json
import re

import pytest

from tako.errors import ProtocolError
from tako.protocol import (
    MAX_IDLE_TIMEOUT,
    MAX_INSTANCES,
    MAX_LINE_BYTES,
    Delete,
    Deploy,
    Hello,
    List,
    Reload,
    Routes,
    Status,
    Stop,
    decode_reply,
    decode_request,
    encode_request,
    error_reply,
    ok_reply,
)


@pytest.mark.parametrize(
    "request_",
    [
        Hello(client="tako 1"),
        Deploy(app="a", version="v1", path="/opt/tako/apps/a/releases/v1", routes=("a.test",), instances=2),
        Status(app="a"),
        List(),
        Routes(),
        Stop(app="a"),
        Delete(app="a"),
        Reload(app="a"),
    ],
)
def test_round_trip(request_: object) -> None:
    line = encode_request(request_)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == request_


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"app": "x"}', 'no "command"'),
        (b'{"command": "launch"}', "unknown command 'launch'"),
        (b'{"command": "status"}', "needs field 'app'"),
        (b'{"command": "status", "app": 1}', "'app' must be a string"),
        (b'{"command": "status", "app": "a", "extra": 1}', "unknown fields: extra"),
        (
            b'{"command": "deploy", "app": "a", "version": "v", "path": "/p", "routes": "x"}',
            "list of strings",
        ),
        (
            b'{"command": "deploy", "app": "a", "version": "v", "path": "/p", "routes": [], '
            b'"instances": true}',
            "must be an integer",
        ),
    ],
)
def test_bad_requests_are_explained(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(line)


def test_oversized_line_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        decode_request(b"x" * (MAX_LINE_BYTES + 1))


def test_replies() -> None:
    assert decode_reply(ok_reply({"a": 1})).data == {"a": 1}
    reply = decode_reply(error_reply("boom", app="x"))
    assert not reply.ok and reply.message == "boom" and reply.extra == {"app": "x"}
    assert json.loads(ok_reply(None)) == {"status": "ok", "data": None}
    with pytest.raises(ProtocolError):
        decode_reply(b"garbage")


DEPLOY = b'{"command": "deploy", "app": "a", "version": "v", "path": "/p", "routes": ["a.test"]'


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (b', "instances": 1000000', f"'instances' must be at most {MAX_INSTANCES}, got 1000000"),
        (b', "instances": -1', "'instances' must be at least 0, got -1"),
        (b', "idle_timeout": 100000000000000000000000', f"'idle_timeout' must be at most {MAX_IDLE_TIMEOUT}"),
        (b', "idle_timeout": -5', "'idle_timeout' must be at least 0, got -5"),
    ],
)
def test_deploy_numbers_out_of_range_are_refused(fields: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode_request(DEPLOY + fields + b"}")


def test_deploy_numbers_at_the_limits_are_accepted() -> None:
    fields = f', "instances": {MAX_INSTANCES}, "idle_timeout": {MAX_IDLE_TIMEOUT}'.encode()
    request = decode_request(DEPLOY + fields + b"}")
    assert isinstance(request, Deploy)
    assert (request.instances, request.idle_timeout) == (MAX_INSTANCES, MAX_IDLE_TIMEOUT)
