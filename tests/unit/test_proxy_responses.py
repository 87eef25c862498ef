"""The proxy's own answers: well-formed, short, plain, and free of internals."""

from __future__ import annotations

import httptools
import pytest

from tako.server.proxy import responses
from tako.server.proxy.headers import without_headers


def _parse(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    headers: dict[bytes, bytes] = {}
    body = bytearray()
    done: list[bool] = []

    class P:
        def on_header(self, name: bytes, value: bytes) -> None:
            headers[name.lower()] = value

        def on_body(self, chunk: bytes) -> None:
            body.extend(chunk)

        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(data)
    assert done, "response incomplete"
    return parser.get_status_code(), headers, bytes(body)


@pytest.mark.parametrize("status", sorted(responses.ERROR_BODIES))
@pytest.mark.parametrize("close", [False, True])
def test_error_pages_are_complete_plain_and_short(status: int, close: bool) -> None:
    code, headers, body = _parse(responses.error(status, close=close))
    assert code == status
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert int(headers[b"content-length"]) == len(body) < 100
    assert (headers.get(b"connection") == b"close") is close
    for leak in (b"127.0.0.1", b"Traceback", b"python", b"uvloop", b"tako"):
        assert leak not in body.lower()


def test_head_only_keeps_length_drops_body() -> None:
    data = responses.error(404, close=False, head_only=True)
    assert data.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(responses.ERROR_BODIES[404]) in data


def test_unavailable_carries_reason_and_retry_after() -> None:
    code, headers, body = _parse(responses.unavailable(503, "App is starting", 2, close=False))
    assert code == 503 and headers[b"retry-after"] == b"2" and body == b"App is starting\n"
    code, headers, _ = _parse(responses.unavailable(999, "", None, close=True))
    assert code == 503 and b"retry-after" not in headers


def test_redirect_location() -> None:
    data = responses.redirect(b"https://a.example/x?y=1", keep_method=False, close=False, head_only=False)
    code, headers, _ = _parse(data)
    assert code == 301 and headers[b"location"] == b"https://a.example/x?y=1"
    code, headers, body = _parse(
        responses.redirect(b"https://a/", keep_method=True, close=True, head_only=False)
    )
    assert (
        code == 308 and headers[b"location"] == b"https://a/" and body == b"Permanent Redirect: https://a/\n"
    )


def test_connection_named_headers_are_dropped_case_insensitively() -> None:
    pieces = [b"X-A", b": ", b"1", b"\r\n", b"x-b", b": ", b"2", b"\r\n", b"Keep", b": ", b"3", b"\r\n"]
    assert without_headers(pieces, [b"x-a", b"x-b"]) == [b"Keep", b": ", b"3", b"\r\n"]
