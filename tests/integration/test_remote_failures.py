"""What the executor raises when SSH or tako-server fails, against a real SSH server on loopback (asyncssh's,
in this process): each failure is the error of its kind, so callers can catch timeouts, lost connections
and silent servers as such."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh
import pytest

from tako.errors import (
    CommandFailed,
    ConnectionLost,
    RemoteError,
    RemoteTimeout,
    ServerNotAnswering,
    ServerTimeout,
    Timeout,
    Unavailable,
)
from tako.protocol import Hello
from tako.remote.connection import ServerAddress
from tako.remote.executor import Executor, cmd

pytestmark = pytest.mark.integration


@dataclass
class FailingServer:
    """An SSH server whose commands and control socket fail on purpose. Commands: `hang` runs until the
    test ends, `drop` cuts the whole connection, `fail` exits 3 with a message. The control socket is
    `silent` (reads, never answers) or `closing` (reads the request, closes without an answer)."""

    control: str = "silent"
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    connections: list[asyncssh.SSHServerConnection] = field(default_factory=list)

    async def command(self, process: asyncssh.SSHServerProcess[str]) -> None:
        if process.command == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 60)
        elif process.command == "drop":
            self.connections[-1].abort()
            return
        elif process.command == "fail":
            process.stderr.write("no such release\n")
            process.exit(3)
            return
        process.exit(0)

    async def socket(self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        if self.control == "closing":
            await reader.readline()  # the request, as tako-server reads it, then gone (a crash)
            writer.close()
            return
        with contextlib.suppress(asyncssh.Error, OSError):
            while await reader.read(4096):
                pass


class _Handler(asyncssh.SSHServer):
    def __init__(self, server: FailingServer) -> None:
        self.server = server

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.server.connections.append(conn)

    def begin_auth(self, username: str) -> bool:
        return False  # loopback only: anyone may log in

    def unix_connection_requested(self, dest_path: str) -> object:
        return self.server.socket


@pytest.fixture
async def failing() -> AsyncIterator[tuple[FailingServer, Executor]]:
    server = FailingServer()
    listener = await asyncssh.create_server(
        lambda: _Handler(server),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=server.command,
    )
    port = listener.sockets[0].getsockname()[1]
    conn = await asyncssh.connect("127.0.0.1", port, username="tako", known_hosts=None, client_keys=None)
    try:
        yield server, Executor(conn, ServerAddress("web1", "127.0.0.1", port))
    finally:
        server.stop.set()
        conn.close()
        listener.close()
        await listener.wait_closed()


async def test_a_command_past_its_timeout_is_a_remote_timeout(
    failing: tuple[FailingServer, Executor],
) -> None:
    _, ex = failing
    with pytest.raises(RemoteTimeout) as info:
        await ex.run(cmd("hang"), timeout=0.5, what="the release command")
    assert info.value.message == "web1: the release command timed out"
    assert isinstance(info.value, Timeout) and isinstance(info.value, RemoteError)


async def test_a_cut_connection_is_connection_lost(failing: tuple[FailingServer, Executor]) -> None:
    _, ex = failing
    with pytest.raises(ConnectionLost) as info:
        await ex.run(cmd("drop"), what="extract")
    assert info.value.message == "web1: connection lost during extract"
    assert isinstance(info.value, Unavailable)


async def test_a_failed_command_is_command_failed_with_its_stderr(
    failing: tuple[FailingServer, Executor],
) -> None:
    _, ex = failing
    with pytest.raises(CommandFailed) as info:
        await ex.run(cmd("fail"), what="switch")
    assert info.value.message == "web1: switch failed: no such release"


async def test_a_silent_tako_server_is_a_server_timeout(failing: tuple[FailingServer, Executor]) -> None:
    _, ex = failing
    with pytest.raises(ServerTimeout) as info:
        await ex.control(Hello(), timeout=1)
    assert info.value.message == "web1: tako-server did not answer 'hello' in 1s"
    # A timeout, a server that does not answer, and a remote failure: what deploy steps catch as one.
    assert isinstance(info.value, Timeout) and isinstance(info.value, Unavailable)
    assert isinstance(info.value, RemoteError)


async def test_a_control_connection_closed_unanswered_is_server_not_answering(
    failing: tuple[FailingServer, Executor],
) -> None:
    server, ex = failing
    server.control = "closing"
    with pytest.raises(ServerNotAnswering) as info:
        await ex.control(Hello(), timeout=30)
    assert info.value.message == "web1: tako-server closed the control connection"
    assert not isinstance(info.value, Timeout)
