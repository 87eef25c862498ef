"""Maintenance mode on a real tako-server: the app's routes answer 503 with Retry-After and its page,
listed clients (by source address on loopback) still reach the app, `/_tako/status` keeps answering, it
survives a restart, and with `[server] workers = 2` both processes answer alike."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.support.server_process import TakoServer, make_release, running_server, wait_for

pytestmark = pytest.mark.integration

HOST = "shop.tako.test"
_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE  # the proxy's self-signed certificate for routed hosts


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


class Client:
    """A keep-alive HTTPS connection to the proxy from `source` (any 127.0.0.0/8 address is local)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.tls = _TLS.wrap_socket(raw, server_hostname=HOST)
        self.pending = b""

    def get(self, path: str = "/", method: str = "GET") -> Answer:
        self.tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.pending:
            self._more()
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(self.pending) < length:
            self._more()
        body, self.pending = self.pending[:length], self.pending[length:]
        return Answer(int(lines[0].split()[1]), headers, body.decode())

    def _more(self) -> None:
        chunk = self.tls.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        self.pending += chunk

    def close(self) -> None:
        self.tls.close()


def fetch(srv: TakoServer, path: str = "/", source: str = "127.0.0.1", method: str = "GET") -> Answer:
    assert srv.https_port
    client = Client(srv.https_port, source)
    try:
        return client.get(path, method)
    finally:
        client.close()


@pytest.fixture
def server() -> Iterator[TakoServer]:
    with running_server() as srv:
        yield srv


def deploy(srv: TakoServer, version: str, page: str | None = None, **fields: object) -> None:
    release = make_release(srv.data_dir, "shop", version)
    if page is not None:
        (release / "maintenance.html").write_text(page)
    srv.call("deploy", app="shop", version=version, path=str(release), routes=[HOST], instances=1, **fields)


def test_maintenance_answers_503_with_retry_after_and_the_default_page_then_off_serves_again(
    server: TakoServer,
) -> None:
    deploy(server, "v1")
    assert fetch(server).status == 200
    reply = server.call("maintenance", app="shop", on=True, message="Back at <b>5</b> & soon")
    assert reply["maintenance"]["on"] is True

    answer = fetch(server)
    assert answer.status == 503
    assert answer.headers["retry-after"].isdigit()
    assert answer.headers["content-type"].startswith("text/html")
    assert "Back at &lt;b&gt;5&lt;/b&gt; &amp; soon" in answer.body  # the message, escaped
    head = fetch(server, method="HEAD")
    assert head.status == 503 and head.body == ""
    assert fetch(server, "/_tako/status").status == 200  # tako-server's own status endpoint
    assert server.call("status", app="shop")["maintenance"]["on"] is True
    # Health checks go on: the instance stays healthy and in rotation.
    assert server.call("status", app="shop")["instances"][0]["state"] == "healthy"

    server.call("maintenance", app="shop", on=False)
    answer = fetch(server)
    assert (answer.status, answer.body.split()[0]) == (200, "version=v1")


def test_allowed_clients_pass_and_a_new_release_brings_its_own_page(server: TakoServer) -> None:
    deploy(server, "v1", maintenance_allow=["127.0.0.2", "::1/128"])
    server.call("maintenance", app="shop", on=True)
    assert fetch(server).status == 503
    assert fetch(server, source="127.0.0.2").status == 200  # listed: served by the app
    assert "maintenance" in fetch(server).body.lower()  # the default page

    # A deploy during maintenance works, keeps maintenance on, and its maintenance.html is used; its
    # maintenance_allow replaces the list.
    deploy(server, "v2", page="<h1>Upgrading the shop</h1>\n", maintenance_allow=["127.0.0.3/32"])
    answer = fetch(server)
    assert (answer.status, answer.body) == (503, "<h1>Upgrading the shop</h1>\n")
    assert fetch(server, source="127.0.0.2").status == 503
    answer = fetch(server, source="127.0.0.3")
    assert (answer.status, answer.body.split()[0]) == (200, "version=v2")
    # A rollback-style deploy (no maintenance_allow) keeps the list.
    deploy(server, "v1")
    assert fetch(server, source="127.0.0.3").status == 200
    assert fetch(server).status == 503


def test_a_bad_allow_entry_is_refused_with_a_clear_error(server: TakoServer) -> None:
    deploy(server, "v1")
    client = server.client()
    reply = client.request("maintenance", app="shop", on=True, allow=["10.0.0.0/8", "not-an-ip"])
    assert reply["status"] == "error"
    assert "'not-an-ip' is not an IP address or CIDR range" in reply["message"]
    assert fetch(server).status == 200  # nothing changed


def test_maintenance_survives_a_restart(server: TakoServer) -> None:
    deploy(server, "v1", page="<p>closed</p>\n", maintenance_allow=["127.0.0.2"])
    server.call("maintenance", app="shop", on=True)
    assert server.stop() == 0
    server.start()
    wait_for(lambda: server.call("status", app="shop")["state"] == "running", what="the app up again")
    answer = fetch(server)
    assert (answer.status, answer.body) == (503, "<p>closed</p>\n")
    assert fetch(server, source="127.0.0.2").status == 200
    assert server.call("status", app="shop")["maintenance"] == {
        "on": True,
        "message": None,
        "allow": ["127.0.0.2"],
    }


def connections_to_every_process(srv: TakoServer, count: int = 2) -> dict[int, Client]:
    """Open keep-alive connections (the kernel spreads new ones over the processes by a hash) until one
    reaches each of `count` data-plane processes; keyed by the pid that serves it."""
    assert srv.https_port
    found: dict[int, Client] = {}
    for _ in range(200):
        client = Client(srv.https_port)
        pid = int(json.loads(client.get("/_tako/status").body)["served_by"])
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) >= count:
            return found
    for client in found.values():
        client.close()
    raise AssertionError(f"200 connections reached only {len(found)} of {count} processes")


def test_both_data_plane_processes_answer_maintenance_from_the_reply_on_with_two_workers() -> None:
    srv = TakoServer()
    srv.config.write_text(srv.config.read_text() + "\n[server]\nworkers = 2\n")
    try:
        srv.start()
        deploy(srv, "v1", maintenance_allow=["127.0.0.2"])
        clients = connections_to_every_process(srv)
        assert {c.get("/").status for c in clients.values()} == {200}
        # The reply comes once every process applied the change: each answers accordingly at once.
        srv.call("maintenance", app="shop", on=True, message="workers too")
        for client in clients.values():
            answer = client.get("/")
            assert answer.status == 503 and "workers too" in answer.body, answer
            assert answer.headers["retry-after"].isdigit()
        for _ in range(20):  # an allowed client passes, whichever process takes its connection
            assert fetch(srv, source="127.0.0.2").status == 200
        srv.call("maintenance", app="shop", on=False)
        assert {c.get("/").status for c in clients.values()} == {200}
        for client in clients.values():
            client.close()
    finally:
        srv.cleanup()
