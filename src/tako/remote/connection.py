"""SSH connections to servers as user `tako`, with host keys pinned in `~/.tako/known_hosts`.

Trust on first use happens only in `probe_server(..., trust_new=True)` (`tako servers add`); every other
connection requires the recorded key and refuses a changed one.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tako.errors import HostKeyError, RemoteError
from tako.fsutil import write_atomic

CONNECT_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3


@dataclass(frozen=True)
class ServerAddress:
    name: str
    host: str
    port: int = 22
    user: str = "tako"

    @property
    def known_hosts_name(self) -> str:
        """The host's name as written in known_hosts (`[host]:port` unless the port is 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _client_keys() -> list[str] | None:
    """`TAKO_SSH_KEY` names a private key file; otherwise asyncssh's defaults (agent, ~/.ssh/id_*)."""
    key = os.environ.get("TAKO_SSH_KEY")
    return [os.path.expanduser(key)] if key else None


def recorded_keys(known_hosts: Path, address: ServerAddress) -> list[str]:
    """The `type base64` key strings recorded for this server."""
    if not known_hosts.exists():
        return []
    found = []
    for line in known_hosts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and address.known_hosts_name in parts[0].split(","):
            found.append(f"{parts[1]} {parts[2]}")
    return found


def forget_keys(known_hosts: Path, address: ServerAddress) -> bool:
    """Remove the server's lines from known_hosts; True if there were any."""
    if not known_hosts.exists():
        return False
    lines = known_hosts.read_text().splitlines(keepends=True)
    kept = [line for line in lines if address.known_hosts_name not in (line.split() or [""])[0].split(",")]
    if len(kept) == len(lines):
        return False
    write_atomic(known_hosts, "".join(kept).encode(), mode=0o600)
    return True


def record_key(known_hosts: Path, address: ServerAddress, key: asyncssh.SSHKey) -> None:
    """Append the server's key to known_hosts (created 0600 in a 0700 directory)."""
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = key.export_public_key("openssh").decode().split()
    entry = f"{address.known_hosts_name} {line[0]} {line[1]}\n"
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(entry)


async def connect(
    address: ServerAddress, known_hosts: Path, *, trust_new: bool = False
) -> asyncssh.SSHClientConnection:
    """Open a verified connection. With `trust_new`, an unknown server's key is recorded."""
    recorded = recorded_keys(known_hosts, address)
    if not recorded and not trust_new:
        raise RemoteError(
            f"{address.name} ({address.host}) has no recorded host key in {known_hosts}",
            hint=f"add it with `tako servers add {address.host} --name {address.name}`",
        )
    trusted = (
        asyncssh.import_known_hosts("".join(f"{address.known_hosts_name} {k}\n" for k in recorded))
        if recorded
        else None
    )
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                address.host,
                address.port,
                username=address.user,
                known_hosts=trusted if recorded else None,
                client_keys=_client_keys(),
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                config=[],
            ),
            timeout=CONNECT_TIMEOUT,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(
            f"the host key of {address.name} ({address.host}:{address.port}) has changed since it was "
            f"recorded in {known_hosts}; refusing to connect",
            hint=f"if the server was reinstalled on purpose, run `tako servers rm {address.name}` (which "
            f"forgets the old key) and `tako servers add {address.host} --name {address.name}"
            + ("`" if address.port == 22 else f" --port {address.port}`")
            + " again",
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise RemoteError(
            f"{address.name}: SSH login as {address.user}@{address.host} was refused",
            hint="authorize your public key for the tako user (scripts/install-server with "
            "TAKO_SSH_PUBKEY), or point TAKO_SSH_KEY at the right private key",
        ) from exc
    except TimeoutError as exc:
        raise RemoteError(f"{address.name}: connecting to {address.host}:{address.port} timed out") from exc
    except (OSError, asyncssh.Error) as exc:
        raise RemoteError(
            f"{address.name}: cannot connect to {address.host}:{address.port}: {_reason(exc)}"
        ) from exc
    if not recorded:
        key = conn.get_server_host_key()
        if key is not None:
            record_key(known_hosts, address, key)
    return conn


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


async def probe_server(address: ServerAddress, known_hosts: Path, *, trust_new: bool) -> str:
    """Connect, run `uname -sm`, and return its output (used by `tako servers add`)."""
    conn = await connect(address, known_hosts, trust_new=trust_new)
    try:
        result = await conn.run("uname -sm", check=False, timeout=30)
    finally:
        conn.close()
    if result.exit_status != 0:
        raise RemoteError(f"{address.name}: `uname -sm` failed: {result.stderr!s}".strip())
    return str(result.stdout).strip()
