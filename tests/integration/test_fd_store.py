"""The listening sockets kept by the service manager (server/fd_store.py): after a kill -9 of tako-server,
a connection made while no tako-server runs waits in the backlog and is answered by the next one, on the
same port. The test plays the service manager: the `tako-server-service` holder process for real, and
systemd's side (a notify socket receiving FDSTORE messages, LISTEN_FDS at the next start)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server_process import CLIENT_TLS, REPO, TakoServer, https_get, wait_for

pytestmark = pytest.mark.integration

HOST = "web.tako.test"


@pytest.fixture
def srv() -> Iterator[TakoServer]:
    server = TakoServer()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def holder(srv: TakoServer) -> Iterator[Path]:
    """tako-server-service's descriptor store, as its supervisor starts it (this process its parent)."""
    path = srv.base / "fds.sock"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "tako.server.fd_holder", str(path), str(os.getpid())]
    proc = subprocess.Popen(argv, env=env)
    try:
        wait_for(path.exists, 10, what="the holder's socket")
        yield path
    finally:
        proc.terminate()
        proc.wait(10)


def set_workers(srv: TakoServer, workers: int) -> None:
    srv.config.write_text(srv.config.read_text() + f"\n[server]\nworkers = {workers}\n")


def answer(conn: socket.socket) -> bytes:
    """GET / on an open TCP connection to the HTTPS port: the response's status line."""
    with CLIENT_TLS.wrap_socket(conn, server_hostname=HOST) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def request_while_down(port: int) -> tuple[threading.Thread, list[bytes]]:
    """Connect now (no tako-server runs) and wait for the answer in a thread."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)  # refused if nothing listened
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(answer(conn)), daemon=True)
    thread.start()
    return thread, got


@pytest.mark.parametrize("workers", [1, 2])
def test_a_connection_made_while_no_tako_server_runs_waits_for_the_next_one(
    srv: TakoServer, holder: Path, workers: int
) -> None:
    set_workers(srv, workers)
    env = {"TAKO_FD_STORE": str(holder)}
    srv.start(env=env)
    srv.deploy("web", "v1", instances=1)
    port = srv.https_port
    assert port is not None
    srv.kill()  # workers = 2: its orphaned worker serves on; connections to the main's socket wait
    threads = [request_while_down(port) for _ in range(4)]
    srv.start(env=env)
    assert srv.https_port == port  # the very socket, kept
    for thread, got in threads:
        thread.join(60)
        assert got == [b"HTTP/1.1 200 OK"]
    assert "Traceback" not in srv.log()


def test_the_kept_sockets_are_replaced_when_the_configured_port_changes(
    srv: TakoServer, holder: Path
) -> None:
    set_workers(srv, 1)  # no orphaned worker listening on the old port after the kill
    env = {"TAKO_FD_STORE": str(holder)}
    srv.start(env=env)
    old = srv.https_port
    srv.kill()
    free = socket.create_server(("127.0.0.1", 0))
    wanted = free.getsockname()[1]
    free.close()
    srv.start(env=env, flags=("--https-port", str(wanted)))
    assert srv.https_port == wanted != old
    assert "do not match the configured address and ports" in srv.log()
    with pytest.raises(ConnectionRefusedError):  # the old port is closed, in the store too
        socket.create_connection(("127.0.0.1", old), timeout=10).close()


def test_under_systemd_the_sockets_go_to_the_notify_socket_and_come_back_as_listen_fds(
    srv: TakoServer,
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(srv.base / "notify.sock"))
    notify.settimeout(30)
    set_workers(srv, 1)  # the store then holds the main process's two sockets
    try:
        srv.start(env={"NOTIFY_SOCKET": str(srv.base / "notify.sock")})
        srv.deploy("web", "v1", instances=1)
        stored = systemd_store(notify)
        assert sorted(stored) == ["http", "https"]
        port = srv.https_port
        assert port is not None
        srv.kill()
        thread, got = request_while_down(port)
        start_as_systemd(srv, stored)
        thread.join(60)
        assert got == [b"HTTP/1.1 200 OK"]
    finally:
        notify.close()


def systemd_store(notify: socket.socket) -> dict[str, socket.socket]:
    """What systemd's descriptor store holds after tako-server's messages (FDSTOREREMOVE, then FDSTORE)."""
    store: dict[str, socket.socket] = {}
    while len(store) < 2:
        data, fds, _, _ = socket.recv_fds(notify, 4096, 8)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        if fields.get("FDSTORE") == "1":
            assert len(fds) == 1
            store[fields["FDNAME"]] = socket.socket(fileno=fds[0])
        else:
            assert fields.get("FDSTOREREMOVE") == "1" and not fds, fields
    return store


def start_as_systemd(srv: TakoServer, stored: dict[str, socket.socket]) -> None:
    """The next start with the stored sockets as fds 3, 4 and LISTEN_PID naming the new process."""
    names = list(stored)
    fds = [stored[name].fileno() for name in names]

    def place() -> None:
        high = [os.dup(fd) for fd in fds]  # first out of the way of 3 and 4
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)  # dup2's copy is inheritable

    cmd = ["sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh", *srv.command()]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": ":".join(names),
    }
    with open(srv.stderr_path, "ab") as log:
        srv.proc = subprocess.Popen(
            cmd, stdout=log, stderr=log, env=env, cwd=srv.base, preexec_fn=place, close_fds=False
        )
    for sock in stored.values():
        sock.close()

    def serving() -> bool:
        assert srv.proc is not None and srv.proc.poll() is None, srv.log()
        try:
            return bool(srv.call("hello"))
        except OSError:
            return False

    wait_for(serving, 30, what="the next tako-server")


async def test_with_workers_the_orphaned_worker_answers_every_connection_while_none_runs(
    srv: TakoServer, holder: Path
) -> None:
    """With workers only theirs are kept: the main process's sockets close with it, so the kernel gives
    every new connection to the orphaned worker instead of keeping some for the next tako-server."""
    set_workers(srv, 2)
    env = {"TAKO_FD_STORE": str(holder)}
    srv.start(env=env)
    srv.deploy("web", "v1", instances=1)
    (worker,) = [w["pid"] for w in srv.call("hello")["workers"]]
    port = srv.https_port
    assert port is not None
    srv.kill()
    for _ in range(10):  # new connections, spread by the kernel over the sockets still listening
        status = await https_get(port, HOST, "/_tako/status", timeout=30)
        assert json.loads(status.body)["served_by"] == worker
    srv.start(env=env)
    assert srv.https_port == port
    assert (await https_get(port, HOST, "/")).status == 200
