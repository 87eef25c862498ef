"""SSH connections to servers, logged in as OpenSSH would (`~/.ssh/config`, ssh-agent, `~/.ssh/id_*`;
user `tako` unless the inventory or the config says otherwise), with host keys pinned in
`~/.tako/known_hosts`.

Trust on first use happens only in `probe_server(..., trust_new=True)` (`tako servers add`); every other
connection requires the recorded key and refuses a changed one. Jump hosts (ProxyJump) are verified
against `~/.ssh/known_hosts`, like ssh does.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from tako.errors import CommandFailed, HostKeyError, LoginRefused, RemoteError, UsageError
from tako.errors.library import TRANSPORT_ERRORS, connect_failure
from tako.fsutil import write_atomic
from tako.remote.client_keys import KEY_ENV, KeyOffer
from tako.remote.ssh_config import DEFAULT_PORT, DEFAULT_USER, LoginTarget, local_user, resolve_login

if TYPE_CHECKING:
    from tako.config.inventory import ServerEntry

CONNECT_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3


@dataclass(frozen=True)
class ServerAddress:
    """A server as the inventory names it; `port`/`user` are None unless given explicitly there."""

    name: str
    host: str
    port: int | None = None
    user: str | None = None

    @classmethod
    def of(cls, entry: ServerEntry) -> ServerAddress:
        """The address of an inventory entry."""
        return cls(entry.name, entry.host, entry.port, entry.user)

    @property
    def known_hosts_name(self) -> str:
        """The host's name as written in known_hosts (`[host]:port` unless the port is 22).

        Always the inventory's host and port, whatever `~/.ssh/config` maps them to, so the pin stays
        under the name the user chose (an alias keeps its key when its HostName changes)."""
        port = self.port or DEFAULT_PORT
        return self.host if port == DEFAULT_PORT else f"[{self.host}]:{port}"

    def login(self) -> LoginTarget:
        """The user, address and keys to log in with: inventory, then `~/.ssh/config`, then defaults."""
        return resolve_login(self.host, user=self.user, port=self.port)

    @property
    def ssh_destination(self) -> str:
        """`user@host` for messages telling the user to run something with `ssh`."""
        return self.login().destination

    def __str__(self) -> str:
        return f"{self.user or DEFAULT_USER}@{self.host}:{self.port or DEFAULT_PORT}"


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
    target = address.login()
    # Only the recorded keys are trusted, whatever name or address the server is reached by (an alias,
    # a HostName from ~/.ssh/config, a jump host's view of it): the pin belongs to the inventory entry.
    trusted: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]] | None = (
        ([asyncssh.import_public_key(k) for k in recorded], [], []) if recorded else None
    )
    tunnel = await _open_jumps(address, target)
    offer = KeyOffer(target)
    try:
        conn = await _login(target, offer, known_hosts=trusted, tunnel=tunnel)
    except asyncssh.HostKeyNotVerifiable as exc:
        _close(tunnel)
        raise HostKeyError(
            f"the host key of {address.name} ({_endpoint(target)}) has changed since it was "
            f"recorded in {known_hosts}; refusing to connect",
            hint=f"if the server was reinstalled on purpose, run `tako servers rm {address.name}` (which "
            f"forgets the old key) and `tako servers add {address.host} --name {address.name}"
            + ("`" if address.port is None else f" --port {address.port}`")
            + " again",
        ) from exc
    except asyncssh.PermissionDenied as exc:
        _close(tunnel)
        raise _refused(address.name, target, offer) from exc
    except BaseException as exc:
        _close(tunnel)
        if isinstance(exc, TRANSPORT_ERRORS):
            raise connect_failure(exc, address.name, _endpoint(target)) from exc
        raise
    finally:
        offer.close()
    if tunnel is not None:
        conn.set_tunnel(tunnel)  # closed with the connection
    if not recorded:
        key = conn.get_server_host_key()
        if key is not None:
            record_key(known_hosts, address, key)
    return conn


async def _login(
    target: LoginTarget,
    offer: KeyOffer,
    *,
    known_hosts: object,
    tunnel: asyncssh.SSHClientConnection | None,
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate within CONNECT_TIMEOUT, not counting time spent typing a passphrase."""
    task = asyncio.ensure_future(
        asyncssh.connect(
            target.alias,
            target.port,
            tunnel=tunnel,  # None: direct, even if the config has a ProxyJump (the caller opened it)
            config=list(target.config_files),
            username=target.user,
            known_hosts=known_hosts,
            # None: asyncssh loads no keys itself and opens no agent; every key comes from the offer.
            client_keys=None,
            client_factory=lambda: _OfferingClient(offer),
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
        )
    )
    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            if done:
                return task.result()
            # Time spent at the passphrase prompt does not count: the user is the one being waited for.
            if offer.prompt_ended + CONNECT_TIMEOUT > time.monotonic():
                deadline = offer.prompt_ended + CONNECT_TIMEOUT
            else:
                raise TimeoutError
    finally:
        task.cancel()  # no-op when done; otherwise the loop finishes the cancellation


class _OfferingClient(asyncssh.SSHClient):
    """Takes its keys one at a time from a KeyOffer (agent, key files, then encrypted key files)."""

    def __init__(self, offer: KeyOffer) -> None:
        self._offer = offer

    async def public_key_auth_requested(self) -> asyncssh.SSHKeyPair | None:
        return await self._offer.next_key()


async def _open_jumps(address: ServerAddress, target: LoginTarget) -> asyncssh.SSHClientConnection | None:
    """Log in to each ProxyJump host in turn (each through the previous); the last one carries the
    connection to the server. Jump hosts are verified against ~/.ssh/known_hosts, as ssh does."""
    if target.proxy_jump is None:
        return None
    tunnel: asyncssh.SSHClientConnection | None = None
    for hop_text in target.proxy_jump.split(","):
        user, hop, port = _parse_jump(hop_text.strip())
        hop_target = resolve_login(hop, user=user, port=port, default_user=local_user())
        offer = KeyOffer(hop_target)
        label = f"{address.name}: jump host {hop_target.destination}"
        try:
            conn = await _login(hop_target, offer, known_hosts=(), tunnel=tunnel)
        except asyncssh.HostKeyNotVerifiable as exc:
            _close(tunnel)
            raise HostKeyError(
                f"{label}: its host key is not in ~/.ssh/known_hosts or does not match it",
                hint=f"log in once with `ssh {hop_target.destination}` to check and record its key",
            ) from exc
        except asyncssh.PermissionDenied as exc:
            _close(tunnel)
            raise _refused(address.name, hop_target, offer, jump=True) from exc
        except BaseException as exc:
            _close(tunnel)
            if isinstance(exc, TRANSPORT_ERRORS):
                raise connect_failure(exc, label, _endpoint(hop_target)) from exc
            raise
        finally:
            offer.close()
        if tunnel is not None:
            conn.set_tunnel(tunnel)
        tunnel = conn
    return tunnel


def _parse_jump(text: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` (also `ssh://` form and `[ipv6]:port`) → (user, host, port)."""
    text = text.removeprefix("ssh://")
    user, _, host = text.rpartition("@")
    port: int | None = None
    if host.startswith("["):
        inner, _, rest = host[1:].partition("]")
        host = inner
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        if not port_text.isdigit():
            raise UsageError(f"invalid ProxyJump port in {text!r}", hint="fix ProxyJump in ~/.ssh/config")
        port = int(port_text)
    return user or None, host, port


def _refused(name: str, target: LoginTarget, offer: KeyOffer, *, jump: bool = False) -> LoginRefused:
    """The refusal: who, where, which keys were offered, and the ways to authorize one."""
    where = f"jump host {target.host}" if jump else target.alias
    via = "" if target.host == target.alias else f" ({_endpoint(target)})"
    pub = offer.public_key_to_authorize()
    port = "" if target.port == DEFAULT_PORT else f" -p {target.port}"
    hint = (
        f"{offer.describe()}. Authorize one of your public keys for {target.user} on {where}: "
        f"`ssh-copy-id -i {pub}{port} {target.destination}`"
    )
    if not jump:
        hint += (
            f', or (re)install the server with scripts/install-server and TAKO_SSH_PUBKEY="$(cat {pub})"'
            f"; or set {KEY_ENV} to the private key that is authorized"
        )
        if target.user == DEFAULT_USER:
            hint += "; to log in as another user: `tako servers add HOST --name NAME --user USER`"
    return LoginRefused(f"{name}: SSH login as {target.user}@{target.alias}{via} was refused", hint=hint)


def _endpoint(target: LoginTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


def _close(conn: asyncssh.SSHClientConnection | None) -> None:
    if conn is not None:
        conn.close()


async def probe_server(address: ServerAddress, known_hosts: Path, *, trust_new: bool) -> str:
    """Connect, run `uname -sm`, and return its output (used by `tako servers add`)."""
    conn = await connect(address, known_hosts, trust_new=trust_new)
    try:
        result = await conn.run("uname -sm", check=False, timeout=30)
    finally:
        conn.close()
    if result.exit_status != 0:
        raise CommandFailed(f"{address.name}: `uname -sm` failed: {result.stderr!s}".strip())
    return str(result.stdout).strip()
