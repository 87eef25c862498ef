"""`[server] workers = 2` and ACME: the moment tako-server reports a certificate issued, every process
serving HTTPS (the main process and its data-plane worker) serves it, with no window where a new
connection still gets the self-signed fallback. A real tako-server, Pebble validating over loopback."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.pebble import Pebble
from tests.support.server_process import TakoServer, wait_for

pytestmark = pytest.mark.integration

HOST = "cert.tako.test"
CONNECTIONS = 40  # both processes take some: the kernel spreads new connections over their listeners


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def pebble_and_server(tmp_path: Path) -> Iterator[tuple[Pebble, TakoServer]]:
    http_port = free_port()  # Pebble validates HTTP-01 on this port: tako-server's HTTP listener
    rig = Pebble(tmp_path / "pebble", http_port=http_port)
    server = TakoServer()
    try:
        rig.start()
        rig.add_a(HOST, "127.0.0.1")
        acme = (
            f"[acme]\ndirectory_url = {json.dumps(rig.directory_url)}\n"
            f"ca_bundle = {json.dumps(str(rig.ca_bundle))}\nretry_initial = 0.2\nretry_max = 1.0\n"
        )
        config = server.config.read_text().replace("[acme]\nenabled = false\n", acme)
        server.config.write_text(config + "\n[server]\nworkers = 2\n")
        server.start(flags=("--http-port", str(http_port)))
        yield rig, server
    finally:
        server.cleanup()
        rig.stop()


def served_by(port: int, context: ssl.SSLContext) -> int:
    """One new TLS connection with SNI HOST: the pid of the process that answered /_tako/status on it."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(f"GET /_tako/status HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        for _ in range(10_000):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["served_by"])


def certificate_state(server: TakoServer) -> str | None:
    state = server.call("status", app="web")["certificates"].get(HOST, {}).get("state")
    return str(state) if state is not None else None


def test_every_process_serves_a_new_certificate_as_soon_as_it_is_reported_issued(
    pebble_and_server: tuple[Pebble, TakoServer],
) -> None:
    rig, server = pebble_and_server
    assert server.https_port
    port = server.https_port
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    server.deploy("web", "v1", routes=(HOST,))

    def reported_valid() -> bool:
        # A client keeps trying meanwhile (as a browser, or `tako deploy` waiting): every process has just
        # selected the self-signed fallback for HOST when the certificate arrives.
        served_by(port, unverified)
        return certificate_state(server) == "valid"

    wait_for(reported_valid, timeout=90, what=f"{HOST} reported valid", interval=0.05)

    verified = ssl.create_default_context(cadata=rig.root_pem().decode())
    pids = [served_by(port, verified) for _ in range(CONNECTIONS)]  # raises on the fallback certificate
    workers = {w["pid"] for w in server.call("hello")["workers"]}
    assert server.proc is not None
    assert set(pids) == workers | {server.proc.pid}, pids
