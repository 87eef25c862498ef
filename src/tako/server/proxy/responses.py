"""Responses the proxy writes itself: short plain-text error pages (or an app's own HTML pages), redirects,
status and ACME answers.

Bodies never carry internals (no upstream addresses, exceptions or versions). Fixed error pages are built
once at import; only redirects and status documents are formatted per request.
"""

from __future__ import annotations

REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    301: b"Moved Permanently",
    304: b"Not Modified",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

ERROR_BODIES: dict[int, bytes] = {
    400: b"Bad Request\n",
    404: b"Not Found: no app is deployed at this address\n",
    405: b"Method Not Allowed\n",
    408: b"Request Timeout: the request (its headers or body) took too long to arrive\n",
    413: b"Content Too Large: the request body is over this server's limit\n",
    431: b"Request Header Fields Too Large\n",
    500: b"Internal Server Error\n",
    502: b"Bad Gateway: the app could not be reached or sent an invalid response\n",
    503: b"Service Unavailable\n",
    504: b"Gateway Timeout: the app took too long to answer\n",
}

_TEXT = b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
HTML = b"text/html; charset=utf-8"
NO_STORE = b"Cache-Control: no-store\r\n"


def response(
    status: int,
    body: bytes,
    *,
    close: bool,
    content_type: bytes | None = None,
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length body (`extra`: preformatted header lines)."""
    reason = REASONS.get(status, b"Unknown")
    ctype = _TEXT if content_type is None else b"Content-Type: " + content_type + b"\r\n"
    conn = b"Connection: close\r\n" if close else b""
    head = b"HTTP/1.1 %d %s\r\n%s%s%sContent-Length: %d\r\n\r\n" % (
        status,
        reason,
        ctype,
        extra,
        conn,
        len(body),
    )
    return head if head_only else head + body


def _prebuilt() -> dict[tuple[int, bool, bool], bytes]:
    return {
        (status, close, head): response(status, body, close=close, head_only=head)
        for status, body in ERROR_BODIES.items()
        for close in (False, True)
        for head in (False, True)
    }


_ERRORS = _prebuilt()


def error(status: int, *, close: bool, head_only: bool = False) -> bytes:
    """A fixed error page (status must be one of ERROR_BODIES); `head_only` for answers to HEAD."""
    return _ERRORS[(status, close, head_only)]


def unavailable(
    status: int,
    reason: str,
    retry_after: int | None,
    *,
    close: bool,
    head_only: bool = False,
    page: bytes | None = None,
) -> bytes:
    """The answer for `AppUnavailable`: its status, its user-facing reason (or the app's own HTML `page`
    for that status) and Retry-After."""
    extra = b"Retry-After: %d\r\n" % retry_after if retry_after is not None else b""
    status = status if 400 <= status < 600 else 503
    if page is not None:
        return response(
            status, page, close=close, content_type=HTML, extra=extra + NO_STORE, head_only=head_only
        )
    body = (reason or "Service Unavailable").encode("utf-8", "replace") + b"\n"
    return response(status, body, close=close, extra=extra, head_only=head_only)


def page(status: int, html: bytes, *, close: bool, head_only: bool = False, extra: bytes = b"") -> bytes:
    """An app's own HTML page for an error tako-server answers (its errors/<status>.html)."""
    return response(status, html, close=close, content_type=HTML, extra=extra + NO_STORE, head_only=head_only)


def redirect(location: bytes, *, keep_method: bool, close: bool, head_only: bool) -> bytes:
    """301 for GET and HEAD; 308 when the method must be kept (clients turn a POST redirected by 301 into
    a GET and drop its body)."""
    status = 308 if keep_method else 301
    body = REASONS[status] + b": " + location + b"\n"
    return response(status, body, close=close, extra=b"Location: " + location + b"\r\n", head_only=head_only)
