"""The `maintenance_allow` list: client addresses (IPv4 or IPv6, single or CIDR) let through maintenance.

One parser for the CLI (tako.toml, with file and line) and tako-server (the control socket), so both
refuse the same entries with the same words.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Entries per app: each is tested in turn for a client while maintenance is on; a longer list is a
# firewall's job, not a maintenance switch's.
MAX_ALLOW_ENTRIES = 256

ALLOW_HINT = 'use addresses or CIDR ranges, e.g. ["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"]'


def parse_network(entry: str) -> Network:
    """One entry as a network (a bare address is a /32 or /128); ValueError saying what is wrong."""
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Every entry as a network, in order; ValueError naming the first bad one."""
    networks = tuple(parse_network(e) for e in entries)
    if len(networks) > MAX_ALLOW_ENTRIES:
        raise ValueError(f"{len(networks)} entries; at most {MAX_ALLOW_ENTRIES} are allowed")
    return networks
