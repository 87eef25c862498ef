"""Library exceptions as Tako errors: the one place asyncssh's, the socket layer's and timeouts' exceptions
are told apart, so every caller reports a timeout as a timeout and a broken connection as one.

Callers chain the original: `raise remote_failure(exc, server, "tar") from exc`.
"""

from __future__ import annotations

import os

import asyncssh

from tako.errors import (
    CannotConnect,
    ConnectionLost,
    HostKeyError,
    LoginRefused,
    RemoteError,
    RemoteTimeout,
)

# What a command, a connection or a transfer can raise that `remote_failure` and `connect_failure` map.
TRANSPORT_ERRORS = (asyncssh.Error, OSError)  # TimeoutError is an OSError; so is asyncssh's


def reason(exc: BaseException) -> str:
    """A short lower-case reason: asyncssh's own, or the errno's text for socket errors."""
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    if isinstance(exc, OSError):
        # asyncio's connect errors read "Connect call failed ('10.0.0.5', 22)": the errno says it better
        # ("connection refused"), and the message already names host and port.
        if exc.errno:
            text = os.strerror(exc.errno)
            return text[:1].lower() + text[1:]
        return exc.strerror or str(exc)
    return str(exc)


def remote_failure(
    exc: BaseException,
    server: str,
    doing: str,
    *,
    timeout: float | None = None,
    message: str | None = None,
) -> RemoteError:
    """What went wrong while `doing` ran on `server` over an open connection: it timed out (after
    `timeout` seconds, when given), or the connection broke. `message` replaces the default text."""
    if isinstance(exc, TimeoutError):
        after = "" if timeout is None else f" after {timeout:.0f}s"
        return RemoteTimeout(message or f"{server}: {doing} timed out{after}")
    return ConnectionLost(message or f"{server}: connection lost during {doing}")


def exit_status(status: int | None, server: str, doing: str) -> int:
    """A finished remote command's exit status; asyncssh reports None when the channel closed with neither
    a status nor a signal, which is a connection cut while `doing` ran (not a failure of the command)."""
    if status is None:
        raise ConnectionLost(f"{server}: connection lost during {doing}")
    return status


def connect_failure(exc: BaseException, label: str, endpoint: str) -> RemoteError:
    """Why no SSH connection to `endpoint` came about (`label` names the server or the jump host)."""
    if isinstance(exc, TimeoutError):
        return RemoteTimeout(f"{label}: connecting to {endpoint} timed out")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(f"{label}: the host key of {endpoint} is not the recorded one")
    if isinstance(exc, asyncssh.PermissionDenied):
        return LoginRefused(f"{label}: SSH login to {endpoint} was refused")
    return CannotConnect(f"{label}: cannot connect to {endpoint}: {reason(exc)}")
