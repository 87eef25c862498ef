"""Where and as whom to log in to a server: the inventory's explicit user and port, then what
`~/.ssh/config` says for the host, then Tako's defaults (user `tako`, port 22).

This is OpenSSH's own precedence (a value given explicitly beats the config file, the first matching
`Host` block's value beats later ones), so a host alias that works with `ssh` works with Tako too.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from asyncssh.config import ConfigParseError, SSHClientConfig

from tako.errors import UsageError

DEFAULT_USER = "tako"
DEFAULT_PORT = 22
_UNSET = object()


def user_ssh_config() -> Path:
    """`~/.ssh/config` of the user running Tako (HOME decides, as for ssh)."""
    return Path.home() / ".ssh" / "config"


@dataclass(frozen=True)
class LoginTarget:
    """A server's SSH login after applying `~/.ssh/config`."""

    alias: str  # the name Tako was given (inventory host); `Host` blocks match it
    host: str  # the address to reach: HostName from the config, else the alias
    port: int
    user: str
    identity_files: tuple[Path, ...]  # IdentityFile lines, in order; empty means the default key files
    identities_only: bool
    identity_agent: str | None  # IdentityAgent from the config; None means SSH_AUTH_SOCK
    proxy_jump: str | None  # ProxyJump (`[user@]host[:port]`, comma-separated), None when direct
    config_files: tuple[Path, ...]  # the config files read (passed on to the SSH library)

    @property
    def destination(self) -> str:
        """`user@alias`, what to type after `ssh` to log in the same way."""
        return f"{self.user}@{self.alias}"


def resolve_login(
    alias: str,
    *,
    user: str | None = None,
    port: int | None = None,
    default_user: str = DEFAULT_USER,
    config_file: Path | None = None,
) -> LoginTarget:
    """Combine an explicit `user`/`port` (None = not given) with `~/.ssh/config` and the defaults."""
    path = config_file if config_file is not None else user_ssh_config()
    files = (path,) if os.access(path, os.R_OK) else ()
    try:
        # Explicit values are set before the file is read, so the file cannot override them (as in ssh).
        config = SSHClientConfig.load(
            None, list(files), False, False, False, _local_user(), user or (), alias, port or ()
        )
    except ConfigParseError as exc:
        raise UsageError(
            f"cannot read the SSH config: {exc}", hint=f"fix {path} (`ssh -G {alias}` shows the problem too)"
        ) from exc
    hostname = config.get("Hostname")
    jump = config.get("ProxyJump")
    agent = config.get("IdentityAgent", _UNSET)  # the library stores `IdentityAgent none` as None
    return LoginTarget(
        alias=alias,
        host=str(hostname) if hostname else alias,
        port=int(str(config.get("Port", DEFAULT_PORT))),
        user=str(config.get("User") or default_user),
        identity_files=tuple(Path(str(f)).expanduser() for f in _as_list(config.get("IdentityFile"))),
        identities_only=bool(config.get("IdentitiesOnly", False)),
        identity_agent=None if agent is _UNSET else str(agent or "none"),
        proxy_jump=str(jump) if jump and str(jump).lower() != "none" else None,
        config_files=files,
    )


def local_user() -> str:
    """The login name of the user running Tako (the default user for a jump host, as in ssh)."""
    return _local_user() or DEFAULT_USER


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return ""


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
