"""Pending ACME HTTP-01 tokens and their key authorizations, shared by the issuer and the HTTP listener.

The issuer (in worker threads) adds a token before answering the challenge and removes it once the
authorization is settled; the proxy's HTTP listener looks tokens up from the event loop.
"""

from __future__ import annotations

import threading

# RFC 8555 §8.3: the token is base64url without padding; refusing anything else keeps odd paths out.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class ChallengeStore:
    """Thread-safe token -> key authorization map."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}

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

    def remove(self, token: str) -> None:
        with self._lock:
            self._pending.pop(token, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
