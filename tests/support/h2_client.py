"""A raw HTTP/2 client for the proxy's HTTP/2 tests: the `h2` package frames, a real TLS socket carries.

Frames the `h2` state machine would never send (a connection-specific header, a CONTINUATION flood,
thousands of resets) are written with `hyperframe` directly (`send_raw`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, validate: bool) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.bodies: dict[int, bytearray] = {}
        self.auto_ack_data = True  # give the window back as soon as DATA arrives
        self.raw: RawFrames | None = None  # set: frames are decoded by it alone from then on

    @classmethod
    async def connect(
        cls, port: int, context: ssl.SSLContext, host: str, *, validate: bool = True, settings: Any = None
    ) -> H2Client:
        context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=host, limit=1 << 20
        )
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        assert alpn == "h2", f"ALPN chose {alpn!r}"
        client = cls(reader, writer, validate)
        client.conn.initiate_connection()
        if settings:
            client.conn.update_settings(settings)
        client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def send_raw(self, frames: list[Frame] | bytes) -> None:
        self.writer.write(frames if isinstance(frames, bytes) else b"".join(f.serialize() for f in frames))

    async def receive_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read and process frames until `done()` or the connection closes; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while not done() and not self.closed:
            left = deadline - time.monotonic()
            assert left > 0, f"condition not met in time; events: {self.events[-5:]}"
            try:
                # In short slices: `done` may watch the server's state rather than what arrives.
                data = await asyncio.wait_for(self.reader.read(1 << 20), min(left, 0.05))
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                break
            if self.raw is not None:
                self.raw.feed(data)
                continue
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):
                    self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                    if self.auto_ack_data and event.flow_controlled_length:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.flush()

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (stream_id is None or getattr(e, "stream_id", None) == stream_id)
        ]

    def ended(self, stream_id: int) -> bool:
        return bool(self.of(h2.events.StreamEnded, stream_id) or self.of(h2.events.StreamReset, stream_id))

    def response(self, stream_id: int) -> dict[bytes, bytes]:
        heads = [e for e in self.of(h2.events.ResponseReceived, stream_id)]
        assert heads, f"no response on stream {stream_id}: {self.events[-5:]}"
        return dict(heads[0].headers)

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        found = self.of(h2.events.ConnectionTerminated)
        return found[0] if found else None

    def request(
        self, path: str, host: str, *, method: str = "GET", body: bytes | None = None, extra: Any = ()
    ) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"https"),
            (b":authority", host.encode()),
            *extra,
        ]
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


class RawFrames:
    """The server's frames as they come, decoded without a client state machine (the `h2` one refuses the
    frames of streams finishing after a GOAWAY, which is just what a graceful shutdown sends)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.frames: list[Frame] = []
        self.decoder = hpack.Decoder()
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}  # stream id: error code of the server's RST_STREAM

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
            self.buffer = self.buffer[9 + length :]
            self.frames.append(frame)
            if isinstance(frame, HeadersFrame):
                fields = self.decoder.decode(frame.data, raw=True)
                self.headers.setdefault(frame.stream_id, dict(fields))
            elif isinstance(frame, DataFrame):
                self.bodies[frame.stream_id] = self.bodies.get(frame.stream_id, b"") + frame.data
            elif isinstance(frame, RstStreamFrame):
                self.resets[frame.stream_id] = frame.error_code
                self.ended.add(frame.stream_id)
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)

    def goaway(self) -> GoAwayFrame | None:
        found = [f for f in self.frames if isinstance(f, GoAwayFrame)]
        return found[0] if found else None
