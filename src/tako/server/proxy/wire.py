"""`Receiver` and `Writer`: the two calls between the proxy's transports and its connections that every
request makes twice, and `RequestSink` and `ResponseSink`, the HTTP/1.1 parsers' calls into the
connections: C calls once compiled.

A transport hands what it read to its protocol (`data_received`), and a connection writes its request to
an instance and the response to its client (`write`). Between compiled modules, a method call on an object
whose class the compiler does not know is a Python call: an attribute lookup, a bound method and argument
parsing, about 200 machine instructions even for a method that does nothing (callgrind over
bench/proxy/tls_instructions.py). The transports (plain.py, tls.py) are `Writer`s and the connections
(client.py, upstream.py) `Receiver`s, so each side calls the other through these classes' C method tables.
Anything else (a test's fake, HTTP/2's stream transport, asyncio's own transports) is wrapped once
(`as_receiver`, `as_writer`) and called as before. The parser binding (_http1.pyx) calls a `RequestSink`
(client.py) or `ResponseSink` (upstream.py) through its method table too, three or four times a message;
any other protocol by its methods.

Compiled with Cython where possible, typed by wire.pxd (see compiled.py).
"""

from __future__ import annotations

from typing import Any


class Receiver:
    """A protocol that takes the bytes its transport read."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError


class Writer:
    """A transport that writes bytes."""

    __slots__ = ()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError


class MessageSink(Receiver):
    """What an HTTP/1.1 parser (_http1.pyx, http1_parser.py) calls besides a message's head."""

    __slots__ = ()

    def on_message_begin(self) -> None:
        raise NotImplementedError

    def on_body(self, body: bytes) -> None:
        raise NotImplementedError

    def on_message_complete(self) -> None:
        raise NotImplementedError


class RequestSink(MessageSink):
    """What a request parser calls: the client connection."""

    __slots__ = ()

    def on_head(
        self,
        method: bytes,
        url: bytes,
        version: str,
        keep_alive: bool,
        upgrade: bool,
        block: bytes,
        specials: list[Any],
        count: int,
        size: int,
    ) -> None:
        raise NotImplementedError


class ResponseSink(MessageSink):
    """What a response parser calls: an upstream connection."""

    __slots__ = ()

    def on_head(
        self, status: int, reason: bytes, keep_alive: bool, upgrade: bool, block: bytes, specials: list[Any]
    ) -> None:
        raise NotImplementedError


class _ReceiverOf(Receiver):
    """Any other protocol, called by its method."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def data_received(self, data: bytes) -> None:
        self._protocol.data_received(data)


class _WriterOf(Writer):
    """Any other transport, called by its method."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)


def as_receiver(protocol: Any) -> Receiver:
    """`protocol` itself where it is a Receiver, else a Receiver that calls it."""
    return protocol if isinstance(protocol, Receiver) else _ReceiverOf(protocol)


def as_writer(transport: Any) -> Writer:
    """`transport` itself where it is a Writer, else a Writer that calls it."""
    return transport if isinstance(transport, Writer) else _WriterOf(transport)
