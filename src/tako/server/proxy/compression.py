"""Response compression: whether to encode a response (decided once, on its head) and the encoders.

Independent of HTTP/1.1 framing, so any protocol's response path can use it in three steps:
`start_encoding` on the head (it returns None for a response left as it is, else an `Encoder`, and adds
Content-Encoding and Vary and weakens a strong ETag in the head's pieces), `Encoder.chunk` on each piece of
body as it comes (compressed and flushed, so a streamed response still arrives as it is produced), and
`Encoder.finish` at its end. The caller drops Content-Length: the encoded length is not known in advance.

Levels, chosen for a proxy (measured on an 80 KiB HTML page and an 80 KiB JSON list, one core, ratio and
MB/s of input; `bench/compression/levels.py`): zstd 3 (5.9x, 520 MB/s; level 5 gains 3 % for 2.6x the
CPU), brotli 4 (6.0x, 100 MB/s; 5 gains 9 % for 1.8x the CPU), gzip 4 (5.8x, 134 MB/s; 6 gains 8 % for
1.9x the CPU). An encoder holds a bounded amount of memory whatever the size of its body, measured as RSS
per open stream over 200 of them: gzip about 260 KiB (32 KiB window), brotli 480-580 KiB (256 KiB window;
smaller ones saved nothing at quality 4), zstd 435 KiB with a 128 KiB window and 32 K-entry tables (level 3's
own sizes took 1,000 KiB for the same ratio and speed on 160 KiB of HTML and JSON flushed every 16 KiB).
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Protocol

from tako.server.proxy.encoding_negotiation import best_encoding

# In the order preferred at equal q-values: the fastest for the best ratio first.
CODINGS = ("zstd", "br", "gzip")

GZIP_LEVEL = 4
BROTLI_QUALITY = 4
BROTLI_LGWIN = 18  # 256 KiB window
ZSTD_LEVEL = 3
ZSTD_WINDOW_LOG = 17  # 128 KiB window (level 3's own would be 2 MiB for a long stream)
ZSTD_TABLE_LOG = 15  # hash and chain tables of 32 K entries (level 3's: 128 K and 64 K)

# A body announced shorter than this is sent as it is: the encoded one would hardly be smaller, and
# coding it costs more than sending the difference. A body of unknown length is encoded. At least 1000:
# upstream.py skips lengths of fewer than 4 digits without calling in here.
MIN_LENGTH = 1024

# Media types worth compressing besides text/* and any +json / +xml type (lower case, no parameters).
COMPRESSIBLE_TYPES = frozenset(
    (
        "application/json",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/ld+json",
        "application/manifest+json",
        "application/graphql-response+json",
        "application/wasm",
        "application/x-ndjson",
        "application/x-www-form-urlencoded",
        "application/vnd.api+json",
        "application/x-font-ttf",
        "application/vnd.ms-fontobject",
        "font/ttf",
        "font/otf",
        "image/svg+xml",
        "image/x-icon",
        "image/bmp",
    )
)

# Response headers the decision reads (lower case).
_CONTENT_TYPE = b"content-type"
_CONTENT_ENCODING = b"content-encoding"
_CONTENT_RANGE = b"content-range"
_CACHE_CONTROL = b"cache-control"
_ETAG = b"etag"
_VARY = b"vary"
_READ = frozenset((_CONTENT_TYPE, _CONTENT_ENCODING, _CONTENT_RANGE, _CACHE_CONTROL, _ETAG, _VARY))

_NEGOTIATED_MAX = 256  # distinct Accept-Encoding values remembered (clients send a handful)
_negotiated: dict[bytes, str | None] = {}


class Encoder(Protocol):
    """One response's encoder."""

    coding: bytes

    def chunk(self, data: bytes) -> bytes:
        """`data` encoded and flushed: the client can decode everything given so far."""

    def finish(self) -> bytes:
        """The end of the encoded stream."""


class GzipEncoder:
    __slots__ = ("_z",)
    coding = b"gzip"

    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: 32 KiB window, gzip wrapper

    def chunk(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


# brotli and zstandard are imported by the first response encoded with them: 160 and 530 KiB of RSS that
# a process (each data-plane worker) which never uses them does not pay.


class BrotliEncoder:
    __slots__ = ("_c",)
    coding = b"br"

    def __init__(self) -> None:
        import brotli

        self._c = brotli.Compressor(quality=BROTLI_QUALITY, lgwin=BROTLI_LGWIN)

    def chunk(self, data: bytes) -> bytes:
        return self._c.process(data) + self._c.flush()  # type: ignore[no-any-return]

    def finish(self) -> bytes:
        return self._c.finish()  # type: ignore[no-any-return]


@functools.cache
def _zstd() -> tuple[Any, Any]:
    """zstandard and the compression parameters every zstd encoder uses."""
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, hash_log=ZSTD_TABLE_LOG, chain_log=ZSTD_TABLE_LOG
    )
    return zstandard, params


class ZstdEncoder:
    __slots__ = ("_block", "_c")
    coding = b"zstd"

    def __init__(self) -> None:
        zstandard, params = _zstd()
        self._c = zstandard.ZstdCompressor(compression_params=params).compressobj()
        self._block = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(self._block)  # type: ignore[no-any-return]

    def finish(self) -> bytes:
        return self._c.flush()  # type: ignore[no-any-return]  # the end of the frame


_ENCODERS: dict[str, type[GzipEncoder] | type[BrotliEncoder] | type[ZstdEncoder]] = {
    "gzip": GzipEncoder,
    "br": BrotliEncoder,
    "zstd": ZstdEncoder,
}


def negotiate(accept_encoding: bytes) -> str | None:
    """The coding of CODINGS to use for a request's Accept-Encoding value, or None (remembered per value)."""
    try:
        return _negotiated[accept_encoding]
    except KeyError:
        pass
    coding = best_encoding(accept_encoding, CODINGS)
    if len(accept_encoding) <= 256:
        if len(_negotiated) >= _NEGOTIATED_MAX:
            _negotiated.clear()
        _negotiated[accept_encoding] = coding
    return coding


def is_compressible(content_type: bytes) -> bool:
    """Whether a Content-Type value names a media type worth compressing."""
    media = content_type.partition(b";")[0].strip().lower().decode("latin-1")
    return (
        media.startswith("text/")
        or media in COMPRESSIBLE_TYPES
        or media.endswith("+json")
        or media.endswith("+xml")
    )


def start_encoding(
    accept_encoding: bytes, status: int, pieces: list[bytes], length: bytes | None
) -> Encoder | None:
    """Decide on a response head whether to encode its body; if so, return its encoder and rewrite `pieces`.

    `pieces` are the head's headers as name, ": ", value, CRLF (without framing headers); `length` is its
    Content-Length value, None when unknown. The caller has excluded bodies that cannot be there (HEAD,
    1xx, 204, 304) and upgrades. Left as they are: 206 and anything with Content-Range, a body the app
    encoded itself (any Content-Encoding), `Cache-Control: no-transform`, types not worth it, known
    lengths under MIN_LENGTH, and clients that accept none of CODINGS.
    """
    if status == 206:
        return None
    if length is not None and (not length.isdigit() or int(length) < MIN_LENGTH):
        return None
    found = _read_headers(pieces)
    content_type = found.get(_CONTENT_TYPE)
    if (
        content_type is None
        or _CONTENT_ENCODING in found
        or _CONTENT_RANGE in found
        or b"no-transform" in found.get(_CACHE_CONTROL, b"").lower()
        or not is_compressible(content_type)
    ):
        return None
    coding = negotiate(accept_encoding)
    if coding is None:
        return None
    encoder = _ENCODERS[coding]()
    _rewrite_head(pieces, encoder.coding)
    return encoder


def _read_headers(pieces: list[bytes]) -> dict[bytes, bytes]:
    """The values of the headers the decision reads, by lower-case name (repeated ones joined by ', ')."""
    found: dict[bytes, bytes] = {}
    for i in range(0, len(pieces), 4):
        name = pieces[i].lower()
        if name in _READ:
            value = pieces[i + 2]
            found[name] = found[name] + b", " + value if name in found else value
    return found


def _rewrite_head(pieces: list[bytes], coding: bytes) -> None:
    """Mark the head as encoded: Content-Encoding, Vary naming Accept-Encoding, a strong ETag made weak
    (the encoded bytes differ from the ones the app's ETag names)."""
    vary_done = False
    for i in range(0, len(pieces), 4):
        name = pieces[i].lower()
        if name == _ETAG:
            value = pieces[i + 2].strip()
            if value.startswith(b'"'):
                pieces[i + 2] = b"W/" + value
        elif name == _VARY:
            value = pieces[i + 2]
            tokens = [t.strip().lower() for t in value.split(b",")]
            if b"*" in tokens or b"accept-encoding" in tokens:
                vary_done = True
            elif not vary_done:
                pieces[i + 2] = value + b", Accept-Encoding" if value.strip() else b"Accept-Encoding"
                vary_done = True
    if not vary_done:
        pieces += (b"Vary", b": ", b"Accept-Encoding", b"\r\n")
    pieces += (b"Content-Encoding", b": ", coding, b"\r\n")
