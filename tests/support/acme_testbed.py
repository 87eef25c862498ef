"""Pebble for a testbed host: start it on the host's gateway, point the host's tako-server at it, undo it all.

`pebble_for(host, workdir)` is a context manager: Pebble's API listens on the machine's address as the
host sees it (`host.gateway`), its validator fetches HTTP-01 challenges from port 80 of the address each
name is mapped to (`pebble.add_a`), and the host's `/opt/tako/server-config.toml` gets an `[acme]` section
naming Pebble; tako-server is restarted to read it. On exit Pebble stops and the host's config is restored.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shlex
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from tests.support.pebble import Pebble
from tests.support.testbed import Host

from tako.server.tls import renewal

SERVER_CONFIG = "/opt/tako/server-config.toml"
CA_BUNDLE = "/opt/tako/acme/pebble-api-ca.pem"
CERTS = "/opt/tako/certs"


@dataclass(frozen=True)
class AcmeOptions:
    """What goes into the host's server-config.toml besides Pebble's address: `[acme]` settings, and
    `extra` TOML sections (e.g. `[server]`)."""

    email: str = "tests@tako.test"
    retry_initial: float | None = None
    retry_max: float | None = None
    extra: str = ""


def acme_config(pebble: Pebble, options: AcmeOptions = AcmeOptions()) -> str:
    """server-config.toml: an `[acme]` section naming `pebble` (its API CA copied into the host at
    CA_BUNDLE), then `options.extra`."""
    lines = [
        "# Written by the tests or scripts/demo: certificates come from a local Pebble ACME server.",
        "[acme]",
        f'directory_url = "{pebble.directory_url}"',
        f'ca_bundle = "{CA_BUNDLE}"',
        f'email = "{options.email}"',
    ]
    if options.retry_initial is not None:
        lines.append(f"retry_initial = {options.retry_initial}")
    if options.retry_max is not None:
        lines.append(f"retry_max = {options.retry_max}")
    extra = options.extra.strip()
    return "\n".join(lines) + "\n" + (f"\n{extra}\n" if extra else "")


def restart_server(host: Host) -> None:
    """`tako-server-service restart` as tako (it returns once the control socket answers)."""
    result = host.exec(["tako-server-service", "restart"], user="tako", timeout=60)
    if result.returncode != 0:
        log = host.exec("tail -n 40 /opt/tako/logs/tako-server.log").stdout
        raise AssertionError(f"tako-server restart failed: {result.stderr}{result.stdout}\n{log}")


def configure_acme(host: Host, pebble: Pebble, options: AcmeOptions = AcmeOptions()) -> None:
    """Copy Pebble's API CA into the host, write server-config.toml's [acme], restart tako-server."""
    host.exec(
        f"mkdir -p /opt/tako/acme && cat > {CA_BUNDLE} && chown -R tako:tako /opt/tako/acme",
        input=pebble.ca_bundle.read_text(),
        check=True,
    )
    host.exec(
        f"cat > {SERVER_CONFIG} && chown tako:tako {SERVER_CONFIG}",
        input=acme_config(pebble, options),
        check=True,
    )
    restart_server(host)


@contextlib.contextmanager
def pebble_for(
    host: Host, workdir: Path, options: AcmeOptions = AcmeOptions(), *, restore: bool = True
) -> Iterator[Pebble]:
    """A running Pebble serving `host` (on its gateway, HTTP-01 on port 80) and the host configured for it.

    On exit: Pebble (and its DNS) stopped; with `restore`, the host's previous server-config.toml put
    back and tako-server restarted.
    """
    saved = host.exec(f"cat {SERVER_CONFIG}").stdout
    pebble = Pebble(workdir, http_port=80, listen_host=host.gateway)
    try:
        pebble.start()
        configure_acme(host, pebble, options)
        yield pebble
    finally:
        pebble.stop()
        if restore:
            host.exec(f"cat > {SERVER_CONFIG} && chown tako:tako {SERVER_CONFIG}", input=saved, check=True)
            restart_server(host)


# -- certificates: placing them in a host, reading what it serves ---------------------------------------


def host_certs_dir(host: Host) -> Path:
    """The host's /opt/tako/certs as seen from the machine (the host's /opt is a bind mount of dir/opt)."""
    return Path(host.dir) / "opt" / "tako" / "certs"


def chown_certs(host: Host) -> None:
    host.exec(f"chown -R tako:tako {CERTS}", check=True)


def place_managed(host: Host, name: str, days_left: float) -> bytes:
    """A certificate Tako's issuer wrote earlier (`.managed` marker included), expiring in `days_left`
    days, signed by a throwaway CA. Returns the fullchain bytes."""
    now = datetime.datetime.now(datetime.UTC)
    leaf = trustme.CA().issue_cert(
        name, not_before=now - datetime.timedelta(days=60), not_after=now + datetime.timedelta(days=days_left)
    )
    fullchain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    renewal.write_managed(
        host_certs_dir(host),
        name,
        fullchain,
        leaf.private_key_pem.bytes(),
        directory_url="https://old.invalid/",
    )
    chown_certs(host)
    return fullchain


def place_wildcard(host: Host, domain: str, ca: trustme.CA) -> dict[str, bytes]:
    """A user's own `*.domain` certificate in certs/_wildcard.<domain>/; returns the files' bytes."""
    leaf = ca.issue_cert(f"*.{domain}")
    files = {
        renewal.FULLCHAIN: b"".join(p.bytes() for p in leaf.cert_chain_pems),
        renewal.PRIVKEY: leaf.private_key_pem.bytes(),
    }
    directory = host_certs_dir(host) / f"{renewal.WILDCARD_PREFIX}{domain}"
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / renewal.PRIVKEY).chmod(0o600)
    chown_certs(host)
    return files


def read_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@dataclass(frozen=True)
class Served:
    """The certificate a host served for one SNI name (python ssl, verified against `cafile`)."""

    san: tuple[str, ...]
    subject: tuple[tuple[tuple[str, str], ...], ...]
    issuer: tuple[tuple[tuple[str, str], ...], ...]
    der: bytes


def served_certificate(address: str, server_name: str, cafile: Path | str, *, timeout: float = 5) -> Served:
    """Handshake with `address:443` sending SNI `server_name`; the peer certificate must verify against
    `cafile` for that name (raises ssl.SSLCertVerificationError otherwise)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection((address, 443), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        info: dict[str, Any] = tls.getpeercert() or {}
        der = tls.getpeercert(binary_form=True) or b""
    san = tuple(value for kind, value in info.get("subjectAltName", ()) if kind == "DNS")
    return Served(san=san, subject=info.get("subject", ()), issuer=info.get("issuer", ()), der=der)


def served_der_unverified(address: str, server_name: str, *, timeout: float = 5) -> bytes:
    """The DER of the certificate served for `server_name`, without any verification (fallback checks)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((address, 443), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return tls.getpeercert(binary_form=True) or b""


def control_status(host: Host, app: str) -> dict[str, Any]:
    """The control socket's `status` reply for `app`, asked from inside the host as tako."""
    request = json.dumps({"command": "status", "app": app})
    result = host.exec(
        f"printf '%s\\n' {shlex.quote(request)} | nc -U -q 1 /var/run/tako/tako.sock", user="tako", timeout=30
    )
    line = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    if not line:
        raise AssertionError(f"no reply from the control socket: {result.stderr}")
    reply: dict[str, Any] = json.loads(line)
    return reply
