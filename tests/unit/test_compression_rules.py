"""What `compression.start_encoding` decides on a response head and how it rewrites the head; the encoders
round-trip through the real decoders, flushed chunk by chunk."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from tako.server.proxy import compression
from tako.server.proxy.compression import MIN_LENGTH, is_compressible, negotiate, start_encoding

BIG = str(MIN_LENGTH).encode()


def pieces(*headers: tuple[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    for name, value in headers:
        out += (name, b": ", value, b"\r\n")
    return out


def as_dict(head: list[bytes]) -> dict[bytes, bytes]:
    return {head[i].lower(): head[i + 2] for i in range(0, len(head), 4)}


@pytest.mark.parametrize(
    "content_type",
    [
        b"text/html",
        b"Text/Plain; charset=utf-8",
        b"application/json",
        b"application/problem+json",
        b"image/svg+xml",
        b"application/wasm",
        b"application/javascript",
        b"application/atom+xml",
    ],
)
def test_compressible_types(content_type: bytes) -> None:
    assert is_compressible(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        b"image/png",
        b"image/jpeg",
        b"video/mp4",
        b"application/zip",
        b"application/octet-stream",
        b"font/woff2",
        b"",
        b";",
        b"\xff/\xfe",
    ],
)
def test_types_left_alone(content_type: bytes) -> None:
    assert not is_compressible(content_type)


def test_head_rewritten_for_an_encoded_body() -> None:
    head = pieces((b"Content-Type", b"text/html"), (b"ETag", b'"abc"'), (b"vary", b"Cookie"))
    encoder = start_encoding(b"gzip, br", 200, head, BIG)
    assert encoder is not None and encoder.coding == b"br"
    found = as_dict(head)
    assert found[b"etag"] == b'W/"abc"' and found[b"vary"] == b"Cookie, Accept-Encoding"
    assert found[b"content-encoding"] == b"br"


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        (b"*", b"*"),
        (b"accept-encoding", b"accept-encoding"),
        (b"Origin, Accept-Encoding", b"Origin, Accept-Encoding"),
        (b"", b"Accept-Encoding"),
    ],
)
def test_vary_is_merged_not_repeated(vary: bytes, expected: bytes) -> None:
    head = pieces((b"Content-Type", b"text/css"), (b"Vary", vary), (b"ETag", b'W/"weak"'))
    assert start_encoding(b"gzip", 200, head, None) is not None
    assert as_dict(head)[b"vary"] == expected
    assert as_dict(head)[b"etag"] == b'W/"weak"'  # already weak: as it was
    assert head.count(b"Vary") == 1


@pytest.mark.parametrize(
    ("status", "headers", "length", "accept"),
    [
        (206, [(b"Content-Type", b"text/html")], BIG, b"gzip"),
        (200, [(b"Content-Type", b"text/html"), (b"Content-Range", b"bytes 0-9/10")], BIG, b"gzip"),
        (200, [(b"Content-Type", b"text/html"), (b"content-encoding", b"GZIP")], BIG, b"gzip"),
        (
            200,
            [(b"Content-Type", b"text/html"), (b"Cache-Control", b"max-age=3, NO-TRANSFORM")],
            BIG,
            b"gzip",
        ),
        (200, [(b"Content-Type", b"text/html")], str(MIN_LENGTH - 1).encode(), b"gzip"),
        (200, [(b"Content-Type", b"text/html")], b"12x", b"gzip"),
        (200, [(b"Content-Type", b"image/png")], BIG, b"gzip"),
        (200, [], BIG, b"gzip"),
        (200, [(b"Content-Type", b"text/html")], BIG, b"deflate"),
        (200, [(b"Content-Type", b"text/html")], BIG, b"gzip;q=0, *;q=0"),
    ],
)
def test_left_as_it_is(status: int, headers: list[tuple[bytes, bytes]], length: bytes, accept: bytes) -> None:
    head = pieces(*headers)
    before = list(head)
    assert start_encoding(accept, status, head, length) is None
    assert head == before


def test_an_error_page_is_compressed_too() -> None:
    assert start_encoding(b"gzip", 500, pieces((b"Content-Type", b"text/html")), None) is not None


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
def test_encoders_flush_each_chunk_and_round_trip(coding: str) -> None:
    encoder = start_encoding(coding.encode(), 200, pieces((b"Content-Type", b"text/plain")), None)
    assert encoder is not None
    decoder = _decoder(coding)
    sent = b""
    decoded = b""
    for i in range(50):
        chunk = b"line %d of a stream\n" % i
        sent += chunk
        decoded += decoder(encoder.chunk(chunk))
        assert decoded == sent  # all of it decodable as soon as it is given
    decoded += decoder(encoder.finish())
    assert decoded == sent


def _decoder(coding: str) -> Callable[[bytes], bytes]:
    if coding == "gzip":
        return zlib.decompressobj(31).decompress
    if coding == "br":
        return brotli.Decompressor().process  # type: ignore[no-any-return]
    return zstandard.ZstdDecompressor().decompressobj().decompress


def test_negotiation_remembers_a_bounded_number_of_values() -> None:
    for i in range(2000):
        assert negotiate(b"gzip, x-%d" % i) == "gzip"
    assert len(compression._negotiated) <= 256
