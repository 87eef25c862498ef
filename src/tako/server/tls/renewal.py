"""What certificates are on disk, who owns them, and which hosts need a certificate issued or renewed.

Layout (the certificate store's): `<data_dir>/certs/<host>/{fullchain.pem,privkey.pem}`, wildcards in
`certs/_wildcard.<parent>/`. A directory the ACME issuer wrote holds a `.managed` marker naming the fullchain
it wrote; everything else was placed by the user and is never touched. Writes are atomic (temp + rename).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tako.fsutil import write_atomic

FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"
MARKER = ".managed"
WILDCARD_PREFIX = "_wildcard."  # certs/_wildcard.example.com/ serves *.example.com (see certstore)

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def skip_reason(host: str) -> str | None:
    """Why no public CA can issue a certificate for `host` by HTTP-01, or None if it can be tried."""
    if not host:
        return "empty host name"
    if host.startswith("*."):
        return "wildcard hosts need DNS-01; place a certificate in certs/ yourself"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return "IP addresses get no ACME certificate; the self-signed fallback is served"
    if host == "localhost" or host.endswith(".localhost"):
        return "localhost names get no ACME certificate; the self-signed fallback is served"
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        return "not a valid DNS name"
    if "." not in host:
        return "single-label names get no ACME certificate; use a fully qualified domain name"
    return None


@dataclass(frozen=True)
class CertInfo:
    """The leaf of a fullchain.pem: the names it covers and its validity window (epoch seconds)."""

    names: tuple[str, ...]
    not_before: float
    not_after: float
    sha256: str

    def covers(self, host: str) -> bool:
        for name in self.names:
            if name == host:
                return True
            # A wildcard covers exactly one extra label (RFC 6125 §6.4.3).
            if name.startswith("*.") and host.count(".") >= 2 and host.split(".", 1)[1] == name[2:]:
                return True
        return False


def read_cert(path: Path) -> CertInfo | None:
    """Parse the leaf certificate of a PEM file; None if missing or unreadable."""
    from cryptography import x509  # imported on first use: an idle server does not pay its memory

    try:
        data = path.read_bytes()
        certs = x509.load_pem_x509_certificates(data)
    except (OSError, ValueError):
        return None
    if not certs:
        return None
    leaf = certs[0]
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        names = [str(a.value).lower() for a in cn]
    return CertInfo(
        names=tuple(names),
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@dataclass(frozen=True)
class CertDir:
    """One directory under certs/ as found on disk."""

    name: str
    managed: bool
    cert: CertInfo | None
    has_key: bool
    has_files: bool


def _read_marker(directory: Path) -> list[str] | None:
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    hashes = data.get("fullchain_sha256") if isinstance(data, dict) else None
    if not isinstance(hashes, list):
        return []
    return [h for h in hashes if isinstance(h, str)]


def read_dir(directory: Path) -> CertDir:
    cert = read_cert(directory / FULLCHAIN)
    has_fullchain = (directory / FULLCHAIN).exists()
    has_key = (directory / PRIVKEY).exists()
    marker = _read_marker(directory)
    # Managed only if the marker vouches for the fullchain on disk: a user who replaced a managed
    # certificate by their own keeps it.
    managed = marker is not None and (not has_fullchain or (cert is not None and cert.sha256 in marker))
    return CertDir(
        name=directory.name,
        managed=managed,
        cert=cert,
        has_key=has_key,
        has_files=has_fullchain or has_key,
    )


def scan(certs_dir: Path) -> dict[str, CertDir]:
    """Every certificate directory under certs/ (hidden and temporary entries ignored)."""
    found: dict[str, CertDir] = {}
    try:
        entries = list(certs_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        found[entry.name] = read_dir(entry)
    return found


class Need(enum.Enum):
    NOTHING = "nothing"
    ISSUE = "issue"  # no usable certificate
    RENEW = "renew"  # a managed certificate is inside the renewal window


@dataclass(frozen=True)
class Assessment:
    """For one routed host: who provides its certificate, what it needs, and why."""

    host: str
    need: Need
    user_managed: bool = False
    skipped: str | None = None
    not_after: float | None = None
    note: str | None = None


def assess(hosts: list[str], certs_dir: Path, *, now: float, renew_before: float) -> dict[str, Assessment]:
    """Decide, for each host, whether the ACME issuer must act. Reads the disk; call from a thread."""
    dirs = scan(certs_dir)
    result: dict[str, Assessment] = {}
    for host in hosts:
        reason = skip_reason(host)
        if reason is not None:
            result[host] = Assessment(host, Need.NOTHING, skipped=reason)
            continue
        own = dirs.get(host)
        if own is not None and own.has_files and not own.managed:
            result[host] = _user_exact(host, own, now)
            continue
        if own is not None and own.managed:
            cert = own.cert
            if cert is None or not own.has_key or not cert.covers(host) or cert.not_after <= now:
                result[host] = Assessment(host, Need.ISSUE, not_after=cert.not_after if cert else None)
            elif cert.not_after - now <= renew_before:
                result[host] = Assessment(host, Need.RENEW, not_after=cert.not_after)
            else:
                result[host] = Assessment(host, Need.NOTHING, not_after=cert.not_after)
            continue
        # No certificate of our own: a valid user wildcard, which the certificate store serves for this
        # host when no exact directory exists, must not be shadowed by an exact one.
        wildcard = dirs.get(WILDCARD_PREFIX + host.split(".", 1)[1])
        cert = wildcard.cert if wildcard is not None and wildcard.has_key else None
        if cert is not None and cert.covers(host) and cert.not_after > now:
            result[host] = Assessment(host, Need.NOTHING, user_managed=True, not_after=cert.not_after)
        else:
            result[host] = Assessment(host, Need.ISSUE)
    return result


def _user_exact(host: str, own: CertDir, now: float) -> Assessment:
    note = None
    cert = own.cert
    if cert is None:
        note = f"certs/{host}/{FULLCHAIN} is missing or unreadable; it is yours, so Tako leaves it alone"
    elif not cert.covers(host):
        note = f"the certificate in certs/{host}/ does not name {host}"
    elif cert.not_after <= now:
        note = f"the certificate in certs/{host}/ has expired; replace it or delete the directory"
    elif not own.has_key:
        note = f"certs/{host}/{PRIVKEY} is missing"
    return Assessment(
        host, Need.NOTHING, user_managed=True, not_after=cert.not_after if cert else None, note=note
    )


def write_managed(
    certs_dir: Path, host: str, fullchain_pem: bytes, key_pem: bytes, *, directory_url: str
) -> None:
    """Store an issued certificate for `host`, replacing a previous managed one atomically.

    Order matters for readers that watch the directory: the marker first (vouching for both the old and
    the new fullchain, so a crash leaves the directory managed), then the key, then the fullchain — a
    reader that reloads when fullchain.pem changes always sees a matching pair.
    """
    if skip_reason(host) is not None:
        raise ValueError(f"refusing to write a certificate for {host!r}")
    certs_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    target = certs_dir / host
    target.mkdir(exist_ok=True, mode=0o700)
    current = read_dir(target)
    if current.has_files and not current.managed:
        raise PermissionError(f"{target} holds a user-placed certificate; not replacing it")
    hashes = [hashlib.sha256(fullchain_pem).hexdigest()]
    if current.cert is not None:
        hashes.append(current.cert.sha256)
    marker = {"managed_by": "tako-acme", "directory": directory_url, "fullchain_sha256": hashes}
    write_atomic(target / MARKER, json.dumps(marker, indent=2).encode() + b"\n", mode=0o600)
    write_atomic(target / PRIVKEY, key_pem, mode=0o600)
    write_atomic(target / FULLCHAIN, fullchain_pem, mode=0o600)
    dir_fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
