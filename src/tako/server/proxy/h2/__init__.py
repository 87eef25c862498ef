"""HTTP/2 on the HTTPS listener: a client that picks `h2` in ALPN gets an `H2Connection` (connection.py),
whose streams are proxied to the apps' HTTP/1.1 instances by the same request cycle as HTTP/1.1
connections (stream.py). The framing is the system's libnghttp2, through the compiled `_nghttp2`
module; where that is absent (not built, built from an older `_nghttp2.pyx`, libnghttp2 missing, or
TAKO_PURE_PYTHON=1) ALPN offers only `http/1.1`. See docs/proxy.md, "HTTP/2".
"""

from __future__ import annotations

import asyncio
import os
from types import ModuleType
from typing import TYPE_CHECKING, cast

from tako.server.proxy.compiled import PURE_PYTHON_ENV, binding_problem

if TYPE_CHECKING:
    from tako.server.proxy.client import ConnectionHost

ALPN_H2 = "h2"


def available() -> bool:
    """Whether HTTP/2 can be offered: the libnghttp2 binding is built, current and loads."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why HTTP/2 is not offered (for tako-server's start-up log), or None when it is."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return f"{PURE_PYTHON_ENV} is set"
    problem = binding_problem()
    if problem is not None:
        return problem
    try:
        from tako.server.proxy.h2 import _nghttp2  # noqa: F401
    except ImportError as exc:
        return f"the libnghttp2 binding does not load ({exc})"
    return None


def new_connection(server: ConnectionHost) -> asyncio.Protocol:
    """The protocol for a TLS connection whose client chose `h2` (only when `available()`)."""
    from tako.server.proxy.h2.connection import H2Connection  # needs the compiled binding

    return cast(asyncio.Protocol, H2Connection(server))


def connection_module() -> ModuleType:
    """The connection module, for its limits (tests and docs read them from there)."""
    from tako.server.proxy.h2 import connection

    return connection
