"""`tako servers restart` and `tako servers upgrade` on a testbed host hand tako-server over to a new
process under a request loop over HTTPS (new connections and keep-alive) with a WebSocket open: no request
fails, the WebSocket stays open, and the new process serves."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.e2e.test_server_service import (
    ROUTE,
    control,
    deploy_svc,
    instance_pids,
    servers_on,
    serves,
    the_server,
)
from tests.support.projects import wait_for
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "upgrade"

_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE  # the host serves a self-signed certificate for the route
LOOP_LIMIT = 100_000  # requests per loop at most, whatever happens


@dataclass
class Loop:
    """Requests to the route until stopped: one keep-alive connection and one new connection per request."""

    address: str
    served: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def one(self, conn: http.client.HTTPSConnection, retry: bool) -> None:
        try:
            conn.request("GET", "/", headers={"Host": ROUTE})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                self.failures.append(f"{response.status} {body[:80]!r}")
            self.served += 1
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            if not retry:  # a reused connection closed by the server: every client retries once
                self.failures.append(repr(exc))
                return
            self.one(conn, retry=False)
        except OSError as exc:
            self.failures.append(repr(exc))

    def run(self, keepalive: bool) -> None:
        conn = http.client.HTTPSConnection(self.address, 443, context=_TLS, timeout=30)
        for _ in range(LOOP_LIMIT):
            if self.stop.is_set():
                break
            if not keepalive:
                conn.close()
            self.one(conn, retry=keepalive)
        conn.close()


@pytest.fixture(scope="module")
def svc_host(host: Host) -> Host:
    deploy_svc(host)
    return host


@pytest.fixture
def loop(svc_host: Host) -> Iterator[Loop]:
    state = Loop(svc_host.address)
    threads = [threading.Thread(target=state.run, args=(k,)) for k in (True, False)]
    for thread in threads:
        thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        for thread in threads:
            thread.join(60)


def handed_over(host: Host, loop: Loop, cli: TakoCLI, *args: str) -> None:
    """Run `tako servers ARGS` under the loop with a WebSocket open; check what a user would see."""
    from websockets.asyncio.client import connect

    old = the_server(host)
    pids = instance_pids(host)
    wait_for(lambda: loop.served > 20, timeout=60, what="the request loop running")

    async def across_the_hand_over() -> str:
        # The asyncio client: websockets' threaded one writes from the caller's thread while its reader
        # thread handles the server's TLS 1.3 session tickets on the same SSL object, and a request can then
        # stay inside the client's OpenSSL (docs/proxy.md, "TLS read-ahead").
        url = f"wss://{ROUTE}/ws"
        async with connect(
            url, host=host.address, port=443, ssl=_TLS, server_hostname=ROUTE, open_timeout=30
        ) as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), 30) == "before"
            done = await asyncio.to_thread(
                cli.ok, "servers", *args, host.name, env=user_ssh_env(host), timeout=600
            )
            served = loop.served
            await asyncio.to_thread(
                wait_for,
                lambda: loop.served > served + 20,
                timeout=60,
                what="requests served after the hand-over",
            )
            await ws.send("after")
            assert await asyncio.wait_for(ws.recv(), 30) == "after"
            return done.stdout

    out = asyncio.run(across_the_hand_over())
    wait_for(lambda: old not in servers_on(host), timeout=60, what="the old tako-server gone")
    new = the_server(host)
    assert new != old and control(host, "hello")["data"]["pid"] == new  # type: ignore[index]
    assert serves(host)
    assert instance_pids(host) == pids  # adopted, not restarted
    assert loop.failures == [], (loop.failures[:10], out)


def test_servers_restart_hands_over_without_a_failed_request(
    svc_host: Host,
    loop: Loop,
    cli: TakoCLI,
) -> None:
    handed_over(svc_host, loop, cli, "restart")


def test_servers_upgrade_installs_the_cli_version_and_hands_over(
    svc_host: Host,
    loop: Loop,
    cli: TakoCLI,
) -> None:
    # The SSH user (tako) may install into tako-server's venv here: it owns it (root or sudo otherwise).
    svc_host.exec(
        'chown -R tako: "$(dirname "$(dirname "$(readlink -f /usr/local/bin/tako-server)")")"', check=True
    )
    check = cli.ok("servers", "upgrade", svc_host.name, "--check", env=user_ssh_env(svc_host)).stdout
    assert f"{svc_host.name}: tako-server" in check
    handed_over(svc_host, loop, cli, "upgrade")
