"""`"served_by": <pid>` in the `/_tako/status` document when workers run: which process answered, for
operators and tests. The main process and every worker add it the same way."""

from __future__ import annotations

import os

from tako.server.proxy.backend import ServerServices


def stamp_served_by(body: bytes, pid: int) -> bytes:
    """The JSON object `body` with `served_by` as its last member (unchanged if it is not an object)."""
    if body.endswith(b"}") and len(body) > 2:
        return body[:-1] + b',"served_by":%d}' % pid
    return body


class PidServices:
    """The main process's `ServerServices` when workers run: its status document says it answered."""

    def __init__(self, inner: ServerServices) -> None:
        self._inner = inner
        self._pid = os.getpid()

    def status_document(self) -> tuple[int, bytes]:
        code, body = self._inner.status_document()
        return code, stamp_served_by(body, self._pid)

    def acme_key_authorization(self, token: str) -> str | None:
        return self._inner.acme_key_authorization(token)
