"""Ctrl-C during `tako rollback` before tako-server was asked: that server is left as it was and the
outcome says so (a real, silent SSH endpoint keeps the rollback in its connect step)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import asyncssh

from tako.deploy.report import Outcome
from tako.deploy.rollback import rollback_all
from tako.deploy.server_deploy import INTERRUPTED
from tako.remote.connection import ServerAddress


class SteppedProgress:
    """Records each step line; at the first "connecting" one, sends SIGINT as Ctrl-C does (the loop sees
    it once the rollback waits for the server)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def step(self, server: str, step: str, text: str) -> None:
        self.said.append(f"{server}: {text}")
        if step == "connect":
            os.kill(os.getpid(), signal.SIGINT)

    def transfer(self, server: str, sent: int, total: int) -> None:
        raise AssertionError("a rollback uploads nothing")

    def output(self, server: str, line: str) -> None:
        raise AssertionError("a rollback runs no release command")

    def finished(self, outcome: Outcome) -> None:
        self.said.append(f"{outcome.server.name}: finished")


def test_an_interrupt_while_connecting_stops_that_server_and_changes_nothing(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never sends an SSH banner
    port = silent.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"  # pinned, so the CLI goes on to connect
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts.write_text(f"[127.0.0.1]:{port} {key}")
    interrupted: list[bool] = []
    progress = SteppedProgress()

    async def main() -> list[Outcome]:
        address = ServerAddress("quiet", "127.0.0.1", port, "tako")
        return await rollback_all(
            "app", [address], None, known_hosts, progress, on_interrupt=lambda: interrupted.append(True)
        )

    try:
        (result,) = asyncio.run(asyncio.wait_for(main(), timeout=30))
    finally:
        silent.close()
    assert interrupted == [True], (result, progress.said)
    assert progress.said == ["quiet: connecting to 127.0.0.1", "quiet: finished"]
    assert result.error is not None and result.error.message == INTERRUPTED
