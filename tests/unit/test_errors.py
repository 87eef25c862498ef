"""The exception tree: one module owns every class, categories catch a kind of failure across branches,
and library exceptions become the Tako error of their kind in one place."""

from __future__ import annotations

import ast
import errno
import inspect
from pathlib import Path

import asyncssh
import pytest

import tako
import tako.errors as errors
from tako.errors import (
    AppError,
    CannotConnect,
    CommandFailed,
    ConfigError,
    ConnectionLost,
    HostKeyError,
    LoginRefused,
    NotFound,
    OneOffError,
    Refused,
    RemoteError,
    RemoteTimeout,
    ServerError,
    ServerNotAnswering,
    ServerTimeout,
    TakoError,
    Timeout,
    Unavailable,
    UnknownApp,
    UsageError,
)
from tako.errors.library import connect_failure, exit_status, reason, remote_failure
from tako.protocol import ERROR_UNKNOWN_APP

SRC = Path(tako.__file__).resolve().parent


def test_every_tako_error_class_is_defined_in_tako_errors() -> None:
    tree_names = {name for name, obj in vars(errors).items() if inspect.isclass(obj)}
    elsewhere = []
    for path in sorted(SRC.rglob("*.py")):
        if path.is_relative_to(SRC / "errors"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & tree_names:
                    elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert elsewhere == []


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (RemoteTimeout("web1: tar timed out"), Timeout),
        (ServerTimeout("web1: tako-server did not answer 'deploy' in 300s"), Timeout),
        (ServerTimeout("web1: tako-server did not answer 'deploy' in 300s"), Unavailable),
        (ServerNotAnswering("web1: tako-server closed the control connection"), Unavailable),
        (CannotConnect("web1: cannot connect to 10.0.0.1:22: connection refused"), Unavailable),
        (ConnectionLost("web1: connection lost during tar"), Unavailable),
        (LoginRefused("web1: SSH login as tako@web1 was refused"), Refused),
        (ServerError("tako-server refused list: busy"), Refused),
        (UnknownApp("unknown app 'shop'"), NotFound),
    ],
)
def test_a_category_catches_its_kind_whatever_raised_it(error: TakoError, category: type[TakoError]) -> None:
    with pytest.raises(category):
        raise error


def test_remote_failures_are_remote_errors_and_a_server_reply_is_not() -> None:
    for cls in (HostKeyError, LoginRefused, CannotConnect, ConnectionLost, RemoteTimeout, CommandFailed):
        assert issubclass(cls, RemoteError)
    # "did not answer" is about the connection; "answered with an error" is tako-server's own word.
    assert issubclass(ServerTimeout, RemoteError) and not issubclass(ServerTimeout, ServerError)
    assert not issubclass(ServerError, RemoteError)


def test_exit_codes_and_hints() -> None:
    assert TakoError("x").exit_code == 1
    assert UsageError("x").exit_code == 2
    assert ConfigError("tako.toml", "bad", key="envs.production.route", line=3).exit_code == 2
    assert OneOffError("x").exit_code == 125  # the runner failed, not the command
    assert RemoteTimeout("x").exit_code == 1
    assert TakoError("x", exit_code=7).exit_code == 7
    error = CannotConnect("web1: cannot connect", hint="check the address")
    assert (error.message, error.hint, str(error)) == (
        "web1: cannot connect",
        "check the address",
        "web1: cannot connect\nhint: check the address",
    )


def test_only_errors_a_client_may_act_on_carry_a_protocol_code() -> None:
    assert UnknownApp("x").code == ERROR_UNKNOWN_APP
    assert AppError("x").code is None and TakoError("x").code is None


def test_a_timeout_maps_to_remote_timeout() -> None:
    for exc in (TimeoutError(), asyncssh.TimeoutError(None, None, None, None, None, 0, None, None, None)):
        mapped = remote_failure(exc, "web1", "tar", timeout=120)
        assert type(mapped) is RemoteTimeout
        assert mapped.message == "web1: tar timed out after 120s"
    assert remote_failure(TimeoutError(), "web1", "tar").message == "web1: tar timed out"


def test_a_broken_connection_maps_to_connection_lost() -> None:
    for exc in (asyncssh.ConnectionLost("gone"), BrokenPipeError(), ConnectionResetError()):
        mapped = remote_failure(exc, "web1", "tar")
        assert type(mapped) is ConnectionLost
        assert mapped.message == "web1: connection lost during tar"


def test_connect_failures_say_why() -> None:
    refused = connect_failure(
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "web1", "h:22"
    )
    assert type(refused) is CannotConnect
    assert refused.message == "web1: cannot connect to h:22: connection refused"
    timed_out = connect_failure(TimeoutError(), "web1", "h:22")
    assert (type(timed_out), timed_out.message) == (RemoteTimeout, "web1: connecting to h:22 timed out")
    denied = connect_failure(asyncssh.PermissionDenied("no"), "web1", "h:22")
    assert type(denied) is LoginRefused
    changed = connect_failure(asyncssh.HostKeyNotVerifiable("mismatch"), "web1", "h:22")
    assert type(changed) is HostKeyError
    lost = connect_failure(asyncssh.ConnectionLost("reset by peer"), "web1", "h:22")
    assert (type(lost), lost.message) == (CannotConnect, "web1: cannot connect to h:22: reset by peer")


def test_reason_prefers_the_errno_text() -> None:
    assert reason(OSError(errno.EHOSTUNREACH, "Connect call failed ('10.0.0.5', 22)")) == "no route to host"
    assert reason(asyncssh.ConnectionLost("Connection lost")) == "Connection lost"


def test_no_exit_status_is_a_lost_connection() -> None:
    # asyncssh's None: the channel closed with neither a status nor a signal.
    assert exit_status(3, "web1", "tar") == 3
    with pytest.raises(ConnectionLost, match=r"^web1: connection lost during tar$"):
        exit_status(None, "web1", "tar")
