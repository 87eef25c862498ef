"""Request ids (`X-Request-Id`): the client's own when it is sane, else one tako-server makes.

A client's id is kept when it is 1 to 128 characters of letters, digits and `-_.:+/=@` (what UUIDs,
ULIDs, base64 and the ids of common load balancers and tracing headers use); anything else (too long,
spaces, control or non-ASCII bytes) is replaced, so an id can be written into a log line or a header as it
is. A made id is a per-process random prefix and a counter in hex (`3f9c2a1be07d4c55-1a`): unique across
processes and restarts without a random draw per request. The ids are made by
`tako.server.proxy.counters.RequestIds`, compiled with the proxy's per-request code.
"""

from __future__ import annotations

import re

MAX_LENGTH = 128
HEADER = b"x-request-id"

_SANE = re.compile(rb"[A-Za-z0-9_.:+/=@-]{1,%d}\Z" % MAX_LENGTH)
is_sane = _SANE.match  # a match object (truthy) when `value` may be kept as it is
