"""Ctrl-C during `tako rollback` before tako-server was asked: that server is left as it was and the
outcome says so (a real, silent SSH endpoint keeps the rollback in its connect step)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import asyncssh

from tako.deploy.rollback import INTERRUPTED, RollbackOutcome, rollback_all
from tako.remote.connection import ServerAddress


def test_an_interrupt_while_connecting_stops_that_server_and_changes_nothing(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never sends an SSH banner
    port = silent.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"  # pinned, so the CLI goes on to connect
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts.write_text(f"[127.0.0.1]:{port} {key}")
    interrupted: list[bool] = []
    said: list[str] = []

    def say(server: str, text: str) -> None:
        said.append(f"{server}: {text}")
        if text.startswith("connecting"):
            # SIGINT as Ctrl-C sends it; the loop sees it once the rollback waits for the server.
            os.kill(os.getpid(), signal.SIGINT)

    async def main() -> list[RollbackOutcome]:
        address = ServerAddress("quiet", "127.0.0.1", port, "tako")
        return await rollback_all(
            "app", [address], None, known_hosts, say, on_interrupt=lambda: interrupted.append(True)
        )

    try:
        (result,) = asyncio.run(asyncio.wait_for(main(), timeout=30))
    finally:
        silent.close()
    assert interrupted == [True], (result, said)
    assert said == ["quiet: connecting to 127.0.0.1"]
    assert result.error is not None and result.error.message == INTERRUPTED
