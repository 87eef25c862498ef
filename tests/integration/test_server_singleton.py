"""One tako-server per data dir: a second one is refused before it touches anything (the first one's
instances keep their pids and keep serving), the lock goes with a SIGKILLed server, and a listener port
that is taken is reported by port, without a traceback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
from tests.support.server_process import REPO, TakoServer, https_get

pytestmark = pytest.mark.integration

LOCK_NAME = "tako-server.lock"


def run_server(srv: TakoServer, *, socket_path: Path, http_port: int = 0) -> subprocess.CompletedProcess[str]:
    """A tako-server on `srv`'s config and data dir, run to its exit (bounded): its code and output."""
    cmd = srv.command(socket=socket_path, http_port=http_port)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=srv.base)
    except subprocess.TimeoutExpired as exc:
        # It did not refuse: it serves beside the first one. Its instances go with the data dir's cleanup.
        raise AssertionError(f"the second tako-server kept running:\n{exc.stderr!r}") from None


def serves(srv: TakoServer, host: str) -> str:
    assert srv.https_port
    resp = asyncio.run(https_get(srv.https_port, host))
    assert resp.status == 200, resp
    return resp.body


def instance_pids(srv: TakoServer, app: str) -> list[int]:
    return sorted(i["pid"] for i in srv.call("status", app=app)["instances"])


def test_a_second_server_on_the_same_data_dir_is_refused_and_the_first_keeps_serving() -> None:
    first = TakoServer()
    try:
        first.start()
        first.deploy("web", "v1", instances=2)
        before = instance_pids(first, "web")
        assert first.proc is not None

        second = run_server(first, socket_path=first.base / "second.sock")

        assert second.returncode != 0
        # Nothing but the refusal and what to do: no log line, no traceback.
        error, hint = second.stderr.splitlines()
        assert error == (
            f"tako-server: error: another tako-server (pid {first.proc.pid}) is running on the data dir "
            f"{first.data_dir}"
        )
        assert hint.startswith("hint: stop it first"), hint
        assert not (first.base / "second.sock").exists()
        assert instance_pids(first, "web") == before
        assert all(psutil.pid_exists(pid) for pid in before)
        assert serves(first, "web.tako.test").startswith("version=v1")
        assert first.call("hello")["pid"] == first.proc.pid
    finally:
        first.cleanup()


def test_the_lock_goes_with_a_killed_server_and_names_the_new_one() -> None:
    srv = TakoServer()
    try:
        srv.start()
        srv.deploy("web", "v1", instances=1)
        assert srv.proc is not None
        assert (srv.data_dir / LOCK_NAME).read_text().strip() == str(srv.proc.pid)
        orphans = instance_pids(srv, "web")
        srv.kill()
        # The instances outlive the killed server until the next one sweeps them: they must not hold the lock.
        assert all(psutil.pid_exists(pid) for pid in orphans)
        srv.start()
        assert srv.proc is not None
        assert (srv.data_dir / LOCK_NAME).read_text().strip() == str(srv.proc.pid)
        assert serves(srv, "web.tako.test").startswith("version=v1")
    finally:
        srv.cleanup()


def test_a_listener_port_in_use_is_named_without_a_traceback() -> None:
    srv = TakoServer()
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_server(srv, socket_path=srv.socket, http_port=port)
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port} (HTTP): the port is already in use" in result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert not srv.socket.exists()
    finally:
        holder.close()
        srv.cleanup()
