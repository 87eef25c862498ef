"""What the ACME manager (`acme.py`) and the client that talks to the CA (`acme_issuer.py`) share.

The manager decides when to act and runs the issuer in threads; it imports the issuer only on first use
(the ACME libraries cost about 9 MB). Both depend on this module and not on each other: the time limits,
the account, and `Issuer`, the interface the manager calls (a failed attempt raises `tako.errors.AcmeError`).
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from acme import messages
    from josepy.jwk import JWKEC

NETWORK_TIMEOUT = 30  # seconds per HTTP request to the CA
ORDER_TIMEOUT = 90.0  # seconds from new order to downloaded certificate


@dataclass(frozen=True)
class Account:
    """The ACME account: its key and its registration with the CA."""

    key: JWKEC
    regr: messages.RegistrationResource


class Issuer(Protocol):
    """The blocking half of issuance, called by the manager in worker threads."""

    def account(self) -> Account:
        """Load or create the account key and register it with the CA."""
        ...

    def issue(self, host: str, account: Account, cancel: threading.Event) -> float:
        """Obtain and store a certificate for `host`: its notAfter (epoch seconds), else AcmeError."""
        ...


def iso_utc(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (`2026-01-31T12:00:00Z`), for status output and logs."""
    if ts is None:
        return None
    return (
        datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
