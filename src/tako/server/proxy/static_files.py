"""Static files served by tako-server from the live release (`[tako] static` in tako.toml).

`StaticMounts` is an app's URL prefixes mapped to directories of one release; `answer` turns a request for
a path under a prefix into a response: the file's bytes (small files, kept in memory after the first
request) or a head plus a span of the file that `static_stream.FileSender` writes with flow control.

What this module refuses is the point of it (docs/proxy.md, "Static files"): a request path is decoded
one segment at a time, and a segment that decodes to a slash, backslash, NUL or control character, that
is not valid UTF-8 (overlong forms included), or that starts with a dot (`.`, `..`, dotfiles) is a 404;
the file found is resolved with every symlink followed and must still lie inside the mount's directory.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import re
import stat
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from tako.server.proxy import responses
from tako.server.proxy.encoding_negotiation import best_encoding

# Precompressed siblings, in the order of preference that breaks ties between equal q-values.
SIBLINGS: tuple[tuple[str, str], ...] = (("zstd", ".zst"), ("br", ".br"), ("gzip", ".gz"))
MEMORY_FILE_MAX = 256 * 1024  # files up to this size are kept in memory after the first request
MEMORY_TOTAL_MAX = 16 * 1024 * 1024  # per mount and process: beyond it, files are read on each request
# A remembered file is checked against the disk (one `stat`, 2 us of the 4.3 us an answer took) at most
# once per this many seconds: a release's files do not change, and one edited in place anyway
# is seen within that time.
RECHECK_SECONDS = 1.0
ENTRIES_MAX = 4096  # files remembered per mount (bounded: forgotten all at once when full)
UNSATISFIABLE = (-1, -1)  # a range that selects no byte of the file: 416
IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"

# A name part of 8-64 hex digits (with at least one digit), neither the first part nor the extension,
# parts separated by dots or dashes: `app.3f2a9c1b.css`, `main-9f86d081884c.js` (docs/proxy.md).
_NAME_PARTS = re.compile(r"[.-]")
_HASH = re.compile(r"(?=[0-9a-f]*[0-9])[0-9a-f]{8,64}\Z", re.I)
# The last 8 characters of the name before its first dot, after a dash, as Vite/Rollup (base64url:
# `index-BHzCr7Z8.js`, `-` and `_` included) and esbuild (base32: `app-5KJPYLLZ.js`) write them. Words must
# not pass, or a file that changes would be cached for a year: base64url needs both cases and a digit or a
# second capital (not `Wordmark`, `v2-small`); base32 needs a digit (not `FULLNAME`). A hash that misses
# these (~4% of Vite's) is served `no-cache`: one revalidation more, never a stale file.
_BUNDLER_HASH = re.compile(
    r"-(?:(?=.*[A-Z])(?=.*[a-z])(?=.*(?:[0-9]|[A-Z].*[A-Z]))[\w-]{8}|(?=.*[2-7])(?=.*[A-Z])[A-Z2-7]{8})\Z",
    re.ASCII,
)
_TYPES = mimetypes.MimeTypes(filenames=())  # Python's own table only: the same answer on every host
_TYPE_OVERRIDES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
}
_CHARSET_TYPES = frozenset(
    ("text/javascript", "application/json", "application/manifest+json", "image/svg+xml", "application/xml")
)
_NOT_FOUND = b"Not Found\n"
_REFUSED = re.compile(r"[\x00-\x1f\x7f/\\]")  # in a decoded segment: separators and control characters
_ALLOW = b"Allow: GET, HEAD\r\n"
OK_LINE = b"HTTP/1.1 200 OK\r\n"
OK_BEFORE_ID = OK_LINE + b"X-Request-Id: "  # then the id and `Asset.ok_after_id`: a 200 with its request id
_UNSATISFIABLE = (
    b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%d\r\nContent-Length: 0\r\n%s\r\n"
)


def content_type(name: str) -> bytes:
    """The Content-Type for a file name, with `charset=utf-8` for text."""
    ext = os.path.splitext(name)[1].lower()
    found = _TYPE_OVERRIDES.get(ext) or _TYPES.guess_type("f" + ext, strict=False)[0]
    kind = found or "application/octet-stream"
    if kind.startswith("text/") or kind in _CHARSET_TYPES:
        kind += "; charset=utf-8"
    return kind.encode("ascii")


def is_fingerprinted(name: str) -> bool:
    """Whether the file name carries a content hash, so its contents never change under that name."""
    parts = _NAME_PARTS.split(name)
    if any(_HASH.match(part) for part in parts[1:-1]):
        return True
    stem = name.partition(".")[0]
    return len(stem) > 9 and _BUNDLER_HASH.match(stem, len(stem) - 9) is not None


def relative_path(rest: bytes) -> str | None:
    """The file a request path below a mount names (`rest` starts with "/"), as a relative path; None for
    anything that is not a plain file name under the mount (see the module docstring)."""
    parts = []
    for segment in rest.split(b"/")[1:]:
        if not segment:
            return None  # `//`, or a trailing slash: a directory
        try:
            name = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name[0] == "." or _REFUSED.search(name) is not None:
            return None
        parts.append(name)
    return "/".join(parts) if parts else None


@dataclass(frozen=True, slots=True)
class FileVersion:
    """One representation of a file on disk: the file itself or a precompressed sibling."""

    path: str
    size: int
    mtime_ns: int
    ino: int
    encoding: str | None  # None: the file itself
    etag: bytes
    body: bytes | None  # the contents, when small enough to keep


@dataclass(frozen=True, slots=True)
class Asset:
    """A file below a mount and what every answer for it shares."""

    plain: FileVersion
    encoded: dict[str, FileVersion]  # coding -> precompressed sibling
    codings: tuple[str, ...]  # the keys of `encoded` in order of preference
    headers: bytes  # Content-Type, Last-Modified, Cache-Control, Accept-Ranges (and Vary) lines
    last_modified: int  # seconds
    ok_head: bytes  # the head of a plain 200 for the file itself on a kept-alive connection
    ok_after_id: bytes  # the same head after its status line and an X-Request-Id value (see OK_BEFORE_ID)


@dataclass(frozen=True, slots=True)
class FileSpan:
    """A part of a file to stream after the head (`static_stream.FileSender`)."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The request headers a static answer depends on (None: absent)."""

    accept_encoding: bytes | None = None
    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    range: bytes | None = None
    if_range: bytes | None = None


# Each header of `RequestHeaders` as the start of its line in a request's forwarded lines, lower-cased.
_WANTED = (
    (b"\r\naccept-encoding: ", "accept_encoding"),
    (b"\r\nif-none-match: ", "if_none_match"),
    (b"\r\nif-modified-since: ", "if_modified_since"),
    (b"\r\nrange: ", "range"),
    (b"\r\nif-range: ", "if_range"),
)


def request_headers(pieces: list[bytes]) -> RequestHeaders:
    """Pick the headers of `RequestHeaders` out of a request's forwarded header lines ("Name: value\r\n"
    each, as headers.py reads them); the first of a repeated header counts. Five searches of the lines in
    C rather than taking every line apart: a browser sends 10-20 of them, most of no interest here."""
    block = b"".join(pieces)
    lower = b"\r\n" + block.lower()  # each line starts after a CRLF; `lower` is 2 bytes ahead of `block`
    found: dict[str, bytes] = {}
    for start, field in _WANTED:
        at = lower.find(start)
        if at >= 0:
            value_at = at + len(start) - 2
            found[field] = block[value_at : block.find(b"\r\n", value_at)]
    return RequestHeaders(**found) if found else NO_HEADERS


NO_HEADERS = RequestHeaders()  # what most requests for a file send: nothing to negotiate or compare


class StaticMount:
    """One URL prefix served from one directory, with the files already looked up."""

    __slots__ = ("_entries", "_kept", "prefix", "root")

    def __init__(self, prefix: str, directory: str) -> None:
        self.prefix = prefix.rstrip("/").encode()
        self.root = os.path.realpath(directory)
        # The request path below the prefix -> its file, and until when it is served without a `stat`.
        self._entries: dict[bytes, tuple[Asset, float]] = {}
        self._kept = 0  # bytes of file contents held by the entries

    def asset(self, rest: bytes) -> Asset | None:
        """The file the request path `rest` names below the root, or None when there is none (or the
        path is refused, or leads out)."""
        now = time.monotonic()
        entry = self._entries.get(rest)
        if entry is not None:
            known, fresh_until = entry
            if now < fresh_until:
                return known
            if _unchanged(known.plain):
                self._entries[rest] = (known, now + RECHECK_SECONDS)
                return known
            self._forget()
        relative = relative_path(rest)
        found = self._look_up(relative) if relative is not None else None
        if found is not None:
            if len(self._entries) >= ENTRIES_MAX:
                self._forget()
            # By the path as sent: a repeat is one dict lookup.
            self._entries[rest] = (found, now + RECHECK_SECONDS)
        return found

    def _forget(self) -> None:
        self._entries.clear()
        self._kept = 0

    def _look_up(self, relative: str) -> Asset | None:
        plain = self._version(relative, None)
        if plain is None:
            return None
        encoded = {}
        for coding, suffix in SIBLINGS:
            version = self._version(relative + suffix, coding)
            if version is not None:
                encoded[coding] = version
        name = relative.rpartition("/")[2]
        cache = IMMUTABLE if is_fingerprinted(name) else REVALIDATE
        seconds = plain.mtime_ns // 1_000_000_000
        lines = [
            b"Content-Type: " + content_type(name),
            b"Last-Modified: " + email.utils.formatdate(seconds, usegmt=True).encode(),
            b"Cache-Control: " + cache,
            b"X-Content-Type-Options: nosniff",
            b"Accept-Ranges: bytes",
        ]
        if encoded:
            lines.append(b"Vary: Accept-Encoding")
        headers = b"\r\n".join(lines) + b"\r\n"
        tail = b"%sETag: %s\r\nContent-Length: %d\r\n\r\n" % (headers, plain.etag, plain.size)
        return Asset(plain, encoded, tuple(encoded), headers, seconds, OK_LINE + tail, b"\r\n" + tail)

    def _version(self, relative: str, encoding: str | None) -> FileVersion | None:
        """The regular file at `relative` if its real path lies inside the root; its contents kept when
        small and the mount's memory allows."""
        real = os.path.realpath(os.path.join(self.root, relative))
        if not real.startswith(self.root + os.sep):
            return None  # a symlink leading out of the directory
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            body = None
            if info.st_size <= MEMORY_FILE_MAX and self._kept + info.st_size <= MEMORY_TOTAL_MAX:
                body = _read_all(fd, info.st_size)
                if body is None:
                    return None
                self._kept += len(body)
        finally:
            os.close(fd)
        tag = b'"%x-%x%s"' % (
            info.st_mtime_ns // 1000,
            info.st_size,
            b"-" + encoding.encode() if encoding else b"",
        )
        return FileVersion(real, info.st_size, info.st_mtime_ns, info.st_ino, encoding, tag, body)


def _unchanged(version: FileVersion) -> bool:
    """Whether the file at `version.path` is still the one looked up (inode, size, mtime)."""
    try:
        now = os.stat(version.path)
    except OSError:
        return False
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (version.ino, version.size, version.mtime_ns)


def _read_all(fd: int, size: int) -> bytes | None:
    data = os.read(fd, size + 1)
    return data if len(data) == size else None  # None: the file changed while it was read


class StaticMounts:
    """An app's static mounts in one release, longest prefix first."""

    __slots__ = ("dirs", "mounts")

    def __init__(self, mounts: dict[str, str]) -> None:
        self.dirs = dict(mounts)  # as given: what a new snapshot is compared with
        built = [StaticMount(prefix, directory) for prefix, directory in mounts.items()]
        self.mounts = tuple(sorted(built, key=lambda m: len(m.prefix), reverse=True))

    def find(self, path: bytes) -> tuple[StaticMount, bytes] | None:
        """The mount `path` lies under and the rest of the path (starting with "/" or empty)."""
        for mount in self.mounts:
            prefix = mount.prefix
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                if not rest or rest[:1] == b"/":
                    return mount, rest
        return None


def answer(
    asset: Asset | None, method: bytes, headers: RequestHeaders, *, close: bool
) -> tuple[int, bytes, bytes | FileSpan | None]:
    """The response to `method` on `asset` (None: no such file, a 404): its status and head, then what
    follows the head: bytes, the span of the file to stream, or nothing."""
    is_head = method == b"HEAD"
    if method != b"GET" and not is_head:
        body = responses.ERROR_BODIES[405]
        return 405, responses.response(405, body, close=close, extra=_ALLOW, head_only=is_head), None
    if asset is None:
        return 404, responses.response(404, _NOT_FOUND, close=close, extra=responses.NO_STORE), None
    version = asset.plain
    if headers is NO_HEADERS and not close:  # the whole file, nothing to compare
        return 200, asset.ok_head, None if is_head else _whole(version)
    if asset.codings and headers.accept_encoding is not None and headers.range is None:
        # A range is served from the file itself: offsets into one encoding are useless to a client that
        # asked for another (and caches do not combine them).
        coding = best_encoding(headers.accept_encoding, asset.codings)
        if coding is not None:
            version = asset.encoded[coding]
    conn = b"Connection: close\r\n" if close else b""
    base = asset.headers + b"ETag: " + version.etag + b"\r\n"
    if version.encoding is not None:
        base += b"Content-Encoding: " + version.encoding.encode() + b"\r\n"
    if not_modified(headers, version.etag, asset.last_modified):
        return 304, b"HTTP/1.1 304 Not Modified\r\n" + base + conn + b"\r\n", None
    start, length, status = 0, version.size, 200
    if headers.range is not None and _if_range_holds(headers.if_range, version.etag, asset.last_modified):
        span = byte_range(headers.range, version.size)
        if span == UNSATISFIABLE:
            return 416, _UNSATISFIABLE % (version.size, conn), None
        if span is not None:
            start, end = span
            length, status = end - start + 1, 206
            base += b"Content-Range: bytes %d-%d/%d\r\n" % (start, end, version.size)
    reason = b"OK" if status == 200 else b"Partial Content"
    head = b"HTTP/1.1 %d %s\r\n%s%sContent-Length: %d\r\n\r\n" % (status, reason, base, conn, length)
    if is_head or length == 0:
        return status, head, None
    if status == 200:
        return status, head, _whole(version)
    if version.body is not None:
        return status, head, version.body[start : start + length]
    return status, head, FileSpan(version.path, start, length)


def _whole(version: FileVersion) -> bytes | FileSpan | None:
    if not version.size:
        return None
    return version.body if version.body is not None else FileSpan(version.path, 0, version.size)


def not_modified(headers: RequestHeaders, etag: bytes, last_modified: int) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match decides when present (weak comparison), else
    If-Modified-Since."""
    if headers.if_none_match is not None:
        tags = [tag.strip() for tag in headers.if_none_match.split(b",")]
        return b"*" in tags or any(tag.removeprefix(b"W/") == etag for tag in tags)
    if headers.if_modified_since is not None:
        since = _http_date(headers.if_modified_since)
        return since is not None and last_modified <= since
    return False


def _if_range_holds(if_range: bytes | None, etag: bytes, last_modified: int) -> bool:
    """Whether a Range applies: no If-Range, or one naming this version (strong ETag or exact date)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value[:1] == b'"':
        return value == etag
    return _http_date(value) == last_modified


def _http_date(value: bytes) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp()) if parsed.tzinfo is not None else None


def byte_range(value: bytes, size: int) -> tuple[int, int] | None:
    """A `Range: bytes=...` value as (first, last) byte positions; UNSATISFIABLE (416); None to
    ignore it and send the whole file (another unit, several ranges, or a value that does not parse)."""
    unit, _, spec = value.strip().partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash or not (first.isdigit() or first == b"") or not (last.isdigit() or last == b""):
        return None
    if first == b"":
        if last == b"":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size - 1
    start = int(first)
    if start >= size:
        return UNSATISFIABLE
    end = size - 1 if last == b"" else min(int(last), size - 1)
    return None if end < start else (start, end)
