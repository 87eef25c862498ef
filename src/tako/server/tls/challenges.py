"""Pending ACME HTTP-01 tokens and their key authorizations, shared by the issuer and the HTTP listener.

The issuer (in worker threads) adds a token before answering the challenge and removes it once the
authorization is settled; the proxy's HTTP listener looks tokens up from the event loop. With a
`directory`, each token is also written there before `set` returns, so data-plane worker processes
(`[server] workers`) can answer a validation that reaches them first: the CA validates as soon as it is
told to, faster than any message to the workers.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from tako.fsutil import write_atomic

CHALLENGES_DIR = "acme/challenges"  # under the data dir

# RFC 8555 §8.3: the token is base64url without padding; refusing anything else keeps odd paths out.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class ChallengeStore:
    """Thread-safe token -> key authorization map."""

    def __init__(self, directory: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}
        self._directory = directory
        if directory is not None:  # tokens of a previous run are settled or abandoned
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.iterdir():
                with contextlib.suppress(OSError):
                    stale.unlink()

    def get(self, token: str) -> str | None:
        """The key authorization to answer `GET /.well-known/acme-challenge/<token>` with, or None."""
        if not token or not _TOKEN_CHARS.issuperset(token):
            return None
        with self._lock:
            return self._pending.get(token)

    def set(self, token: str, key_authorization: str) -> None:
        if not token or not _TOKEN_CHARS.issuperset(token):
            raise ValueError(f"invalid ACME token {token!r}")
        with self._lock:
            self._pending[token] = key_authorization
        if self._directory is not None:
            write_atomic(self._directory / token, key_authorization.encode(), mode=0o600)

    def remove(self, token: str) -> None:
        with self._lock:
            self._pending.pop(token, None)
        if self._directory is not None and token and _TOKEN_CHARS.issuperset(token):
            with contextlib.suppress(OSError):
                (self._directory / token).unlink()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


def read_token_file(directory: Path, token: str) -> str | None:
    """A key authorization written by a `ChallengeStore` with a directory (possibly in another process)."""
    if not token or not _TOKEN_CHARS.issuperset(token):
        return None
    try:
        return (directory / token).read_text()
    except OSError:
        return None
