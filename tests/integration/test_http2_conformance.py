"""HTTP/2 conformance cases in the manner of h2spec: frames a correct server must refuse, each sent raw on a
real TLS connection to a real `ProxyServer`, and the error the client must see (RFC 9113 section named in
each case). None of them may reach the app."""

from __future__ import annotations

import struct
from pathlib import Path

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from tests.support.h2_client import H2Client, RawFrames
from tests.support.proxy_harness import one_app_proxy

from tako.server.proxy import h2 as proxy_h2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.uvloop,
    pytest.mark.skipif(not proxy_h2.available(), reason="the libnghttp2 binding is not built"),
]

HOST = b"a.tako.test"
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 1, 3, 6, 9
GOOD = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", HOST)]


def _block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return hpack.Encoder().encode(fields, huffman=False)


def _headers(fields: list[tuple[bytes, bytes]], *, end_stream: bool = True) -> HeadersFrame:
    flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
    return HeadersFrame(1, _block(fields), flags=flags)


def _raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload


# name: (what the client sends, ("goaway" | "reset", error code))
CASES: dict[str, tuple[list[Frame] | bytes, tuple[str, int]]] = {
    # 6.1: DATA on stream 0; 5.1: DATA on an idle stream.
    "data-on-stream-0": (_raw_frame(0x0, 0, 0, b"x"), ("goaway", PROTOCOL_ERROR)),
    "data-on-idle-stream": ([DataFrame(1, b"x")], ("goaway", PROTOCOL_ERROR)),
    # 4.2: a frame larger than SETTINGS_MAX_FRAME_SIZE (16384).
    "frame-too-large": (
        _raw_frame(0x1, 0x4 | 0x1, 1, _block(GOOD) + b"\0" * 20000), ("goaway", FRAME_SIZE_ERROR)
    ),
    # 6.5.2: SETTINGS values out of range; 6.5: a SETTINGS frame whose length is not a multiple of 6.
    "settings-enable-push-2": ([SettingsFrame(0, {2: 2})], ("goaway", PROTOCOL_ERROR)),
    "settings-window-too-large": ([SettingsFrame(0, {4: 2**31})], ("goaway", FLOW_CONTROL_ERROR)),
    "settings-bad-length": (_raw_frame(0x4, 0, 0, b"\0\0\0"), ("goaway", FRAME_SIZE_ERROR)),
    # 6.7: PING with a length other than 8.
    "ping-bad-length": (_raw_frame(0x6, 0, 0, b"\0" * 6), ("goaway", FRAME_SIZE_ERROR)),
    "ping-on-a-stream": (_raw_frame(0x6, 0, 1, b"\0" * 8), ("goaway", PROTOCOL_ERROR)),
    # 6.9: a zero WINDOW_UPDATE increment on the connection; 6.9.1: a window over 2^31-1.
    "window-update-zero": ([WindowUpdateFrame(0, 0)], ("goaway", PROTOCOL_ERROR)),
    "window-overflow": ([WindowUpdateFrame(0, 2**31 - 1)], ("goaway", FLOW_CONTROL_ERROR)),
    # 6.10: CONTINUATION without a HEADERS before it.
    "continuation-alone": (
        [ContinuationFrame(1, _block(GOOD), flags=["END_HEADERS"])], ("goaway", PROTOCOL_ERROR)
    ),
    # 4.3: a header block HPACK cannot decode (an index past the tables).
    "hpack-bad-index": (
        [HeadersFrame(1, b"\xff\xff\xff\x0f", flags=["END_HEADERS", "END_STREAM"])],
        ("goaway", COMPRESSION_ERROR),
    ),
    # 8.2: upper-case field names; 8.2.2: connection-specific fields, te other than trailers.
    "uppercase-name": ([_headers([*GOOD, (b"X-Upper", b"1")])], ("reset", PROTOCOL_ERROR)),
    "transfer-encoding": ([_headers([*GOOD, (b"transfer-encoding", b"chunked")])], ("reset", PROTOCOL_ERROR)),
    "te-gzip": ([_headers([*GOOD, (b"te", b"gzip")])], ("reset", PROTOCOL_ERROR)),
    # 8.3: pseudo-headers missing, repeated, unknown, or after a regular field.
    "missing-path": ([_headers([f for f in GOOD if f[0] != b":path"])], ("reset", PROTOCOL_ERROR)),
    "repeated-method": ([_headers([*GOOD[:1], *GOOD])], ("reset", PROTOCOL_ERROR)),
    "unknown-pseudo": ([_headers([*GOOD, (b":foo", b"bar")])], ("reset", PROTOCOL_ERROR)),
    "pseudo-after-regular": ([_headers([*GOOD[:3], (b"x-a", b"1"), GOOD[3]])], ("reset", PROTOCOL_ERROR)),
    # 8.1.1: a content-length the DATA frames do not match.
    "content-length-mismatch": (
        [
            _headers([(b":method", b"POST"), *GOOD[1:], (b"content-length", b"10")], end_stream=False),
            DataFrame(1, b"abc", flags=["END_STREAM"]),
        ],
        ("reset", PROTOCOL_ERROR),
    ),
    # 5.1: HEADERS on a stream the client already half-closed.
    "headers-after-end-stream": ([_headers(GOOD), _headers(GOOD)], ("goaway", 5)),  # STREAM_CLOSED
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_as_rfc_9113_says(tmp_path: Path, case: str) -> None:
    frames, (kind, code) = CASES[case]
    async with one_app_proxy(tmp_path) as (p, up):
        c = await H2Client.connect(p.https_port, p.client_context(), HOST.decode(), validate=False)
        raw = c.raw = RawFrames()
        c.send_raw(frames)
        c.send_raw([PingFrame(0, opaque_data=b"done-yet")])  # answered once everything before it was read
        if kind == "goaway":
            await c.receive_until(lambda: raw.goaway() is not None)
            goaway = raw.goaway()
            assert goaway is not None and goaway.error_code == code, raw.frames[-3:]
        else:
            await c.receive_until(lambda: 1 in raw.resets)
            assert raw.resets[1] == code and raw.goaway() is None, raw.frames[-3:]
        assert up.requests == 0 or case == "headers-after-end-stream"
        await c.close()
