"""The answer of an app in maintenance: its page, Retry-After, and the clients let through.

Everything here is built when the app's state changes (deploy, `maintenance on`), never per request: the
data plane tests one attribute of the gate (`maintenance is not None`) and writes prebuilt bytes.
"""

from __future__ import annotations

import html
import ipaddress

from tako.protocol.client_networks import Network
from tako.server.proxy.responses import page

# Seconds a client is told to wait while an app is in maintenance: long enough that crawlers and retrying
# clients do not hammer the server, short enough that a short maintenance ends visibly soon after.
MAINTENANCE_RETRY_AFTER = 30
DEFAULT_MAINTENANCE_MESSAGE = "This site is down for maintenance. Please try again in a few minutes."


def default_maintenance_page(message: str) -> bytes:
    """The plain page shown when the release has no maintenance.html: the message, HTML-escaped."""
    text = html.escape(message.strip() or DEFAULT_MAINTENANCE_MESSAGE)
    return (
        '<!doctype html>\n<html lang="en"><meta charset="utf-8"><title>Down for maintenance</title>\n'
        f"<p>{text}</p>\n</html>\n"
    ).encode()


class MaintenanceAnswer:
    """What an app in maintenance answers: four prebuilt responses (keep-alive or close, with or without a
    body for HEAD) and the networks whose clients still reach the app."""

    __slots__ = ("_answers", "_cache", "allow", "page")

    def __init__(self, html_page: bytes, allow: tuple[Network, ...]) -> None:
        self.page = html_page
        self.allow = allow
        extra = b"Retry-After: %d\r\n" % MAINTENANCE_RETRY_AFTER
        self._answers = {
            (close, head): page(503, html_page, close=close, extra=extra, head_only=head)
            for close in (False, True)
            for head in (False, True)
        }
        self._cache: dict[bytes, bool] = {}  # client address -> let through (bounded below)

    def answer(self, *, close: bool, head_only: bool) -> bytes:
        return self._answers[(close, head_only)]

    def admits(self, client_ip: bytes) -> bool:
        """Whether the client at `client_ip` (as the connection recorded it) passes maintenance."""
        if not self.allow:
            return False
        found = self._cache.get(client_ip)
        if found is None:
            found = _listed(client_ip, self.allow)
            if len(self._cache) >= 4096:  # many distinct clients: forget rather than grow without bound
                self._cache.clear()
            self._cache[client_ip] = found
        return found


def _listed(client_ip: bytes, allow: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip.decode("ascii").partition("%")[0])
    except ValueError:
        return False
    return any(address in network for network in allow)
