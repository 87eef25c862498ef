"""A restarted tako-server serves at once: its listeners open before the always-on instances are started,
so an app that boots fast answers while a slow one is still booting, and a request for the slow one waits
for it as in a cold start instead of failing."""

from __future__ import annotations

import socket
import ssl

import pytest
from tests.support.server_process import TakoServer, get, wait_for

pytestmark = pytest.mark.integration

_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE  # the proxy's self-signed certificate for routed hosts


def unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes the server side of this loopback TCP connection has not read yet (None: no such socket)."""
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return int(queues.split(":")[1], 16)
    return None


def read_response(tls: ssl.SSLSocket) -> tuple[int, str]:
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_restart_serves_a_fast_app_while_a_slow_one_boots_and_requests_for_it_wait() -> None:
    srv = TakoServer(app_settings={"healthy_timeout": 60.0, "cold_start_timeout": 60.0})
    gate = srv.base / "slow-may-boot"
    try:
        gate.touch()
        srv.start()
        srv.deploy("fast", "v1", instances=1)
        srv.deploy("slow", "v1", instances=1, env={"BOOT_WHEN_EXISTS": str(gate)})
        gate.unlink()  # from now on the slow app's instances boot only when the test says so
        assert srv.stop() == 0

        srv.start()
        assert srv.https_port
        # The slow app is still booting (its gate is closed) and the fast one already serves.
        assert srv.call("status", app="slow")["state"] == "starting"
        wait_for(lambda: srv.call("status", app="fast")["state"] == "running", what="the fast app up")
        raw = socket.create_connection(("127.0.0.1", srv.https_port), timeout=60)
        with _TLS.wrap_socket(raw, server_hostname="fast.tako.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: fast.tako.test\r\nConnection: close\r\n\r\n")
            status, body = read_response(tls)
        assert (status, body.split()[0]) == (200, "version=v1")

        # A request for the slow app while it boots: the proxy has read it and holds it.
        raw = socket.create_connection(("127.0.0.1", srv.https_port), timeout=60)
        with _TLS.wrap_socket(raw, server_hostname="slow.tako.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: slow.tako.test\r\nConnection: close\r\n\r\n")
            client_port = tls.getsockname()[1]
            port = srv.https_port
            wait_for(lambda: unread_bytes(port, client_port) == 0, what="the proxy reading the request")
            assert srv.call("status", app="slow")["state"] == "starting"
            gate.touch()
            status, body = read_response(tls)
        assert (status, body.split()[0]) == (200, "version=v1")
        slow = srv.call("status", app="slow")
        assert slow["state"] == "running" and len(slow["instances"]) == 1
        assert get(slow["instances"][0]["port"])[0] == 200
    finally:
        srv.cleanup()


def test_sigterm_while_an_always_on_app_boots_stops_it_and_exits_cleanly() -> None:
    srv = TakoServer(app_settings={"healthy_timeout": 60.0})
    gate = srv.base / "may-boot"
    try:
        gate.touch()
        srv.start()
        srv.deploy("slow", "v1", instances=1, env={"BOOT_WHEN_EXISTS": str(gate)})
        gate.unlink()
        assert srv.stop() == 0

        srv.start()
        wait_for(lambda: srv.instance_processes(), what="the slow instance booting")
        assert srv.call("status", app="slow")["state"] == "starting"
        assert srv.stop() == 0
        assert srv.instance_processes() == []
        assert "Traceback" not in srv.log()
    finally:
        srv.cleanup()


def no_sni_certificate(port: int) -> bytes:
    """The certificate a client dialling the address (no SNI) is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, _TLS.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_restart_after_sigkill_serves_the_stored_default_certificate() -> None:
    srv = TakoServer()
    try:
        srv.start()
        assert srv.https_port
        first = no_sni_certificate(srv.https_port)
        stored = srv.data_dir / "tls" / "default.pem"
        assert stored.stat().st_mode & 0o777 == 0o600
        written = stored.stat().st_mtime_ns
        srv.kill()
        srv.start()
        assert srv.https_port
        assert no_sni_certificate(srv.https_port) == first  # read back, not made again
        assert stored.stat().st_mtime_ns == written
        assert "default certificate" not in srv.log()  # nothing was found unsound
    finally:
        srv.cleanup()
