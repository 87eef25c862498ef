"""Apps outlive tako-server: after a SIGKILL of tako-server its instances keep serving and logging, and the
next tako-server adopts them (same processes) instead of starting new ones; what cannot be adopted (another
release, a recycled pid) is stopped or left alone."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator

import psutil
import pytest
from tests.support.server_process import CLIENT_TLS, TakoServer, get, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def srv() -> Iterator[TakoServer]:
    server = TakoServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


def instances(srv: TakoServer, app: str) -> dict[str, int]:
    return {i["id"]: i["pid"] for i in srv.call("status", app=app)["instances"]}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_instances_outlive_a_killed_server_keep_logging_and_are_adopted(srv: TakoServer) -> None:
    srv.deploy("web", "v1", instances=2)
    before = instances(srv, "web")
    srv.kill()

    # No tako-server: the instances serve on their own ports, and their output still reaches app.log.
    assert all(alive(pid) for pid in before.values())
    ports = _ports(srv)
    assert get(ports[0], "/print?line=while-the-server-is-down")[0] == 200
    wait_for(lambda: "while-the-server-is-down" in srv.app_log("web"), what="output logged with no server")

    srv.start()
    wait_for(lambda: srv.call("status", app="web")["state"] == "running", what="web running")
    assert instances(srv, "web") == before  # the same instances, adopted: not restarted
    assert "adopted" in srv.app_log("web")
    assert get(ports[1], "/print?line=after-adoption")[0] == 200
    wait_for(lambda: "after-adoption" in srv.app_log("web"), what="output logged after adoption")

    # An adopted instance is replaced by a deploy exactly like one this server started.
    after = srv.deploy("web", "v2", instances=2)
    assert {i["version"] for i in after["instances"]} == {"v2"}
    wait_for(lambda: not any(alive(p) for p in before.values()), what="the adopted instances stopped")


def _ports(srv: TakoServer) -> list[int]:
    with sqlite3.connect(srv.data_dir / "tako.db") as db:
        return [int(r[0]) for r in db.execute("SELECT port FROM processes ORDER BY port")]


def test_a_crash_of_an_adopted_instance_is_seen_and_it_is_replaced(srv: TakoServer) -> None:
    srv.deploy("web", "v1", instances=1)
    (pid,) = instances(srv, "web").values()
    srv.kill()
    srv.start()
    wait_for(lambda: srv.call("status", app="web")["state"] == "running", what="web running")
    assert list(instances(srv, "web").values()) == [pid]

    psutil.Process(pid).kill()  # not tako-server's child: its exit is seen through a pidfd
    wait_for(
        lambda: (
            pid not in instances(srv, "web").values() and srv.call("status", app="web")["state"] == "running"
        ),
        what="a replacement instance",
    )
    assert "status unknown" in srv.app_log("web")


def test_an_instance_of_another_release_is_stopped_and_a_recycled_pid_left_alone(srv: TakoServer) -> None:
    srv.deploy("web", "v1", instances=1)
    (pid,) = instances(srv, "web").values()
    srv.kill()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with sqlite3.connect(srv.data_dir / "tako.db") as db:
            # As if tako-server died in a rollout to v0: the instance runs a release that is not the app's.
            db.execute("UPDATE processes SET version = 'v0'")
            # And a record whose pid now names another process (a recycled pid): start time differs.
            db.execute(
                "INSERT INTO processes (instance, app, pid, create_time, port, version) "
                "VALUES ('feedbeef', 'web', ?, 1, 1, 'v1')",
                (stranger.pid,),
            )
        srv.start()
        wait_for(lambda: not alive(pid), what="the instance of the other release stopped")
        web = wait_for(
            lambda: (st := srv.call("status", app="web"))["state"] == "running" and st, what="web running"
        )
        assert [i["pid"] for i in web["instances"]] != [pid]
        assert stranger.poll() is None  # not ours: untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_an_adopted_on_demand_instance_still_stops_when_idle() -> None:
    srv = TakoServer()
    try:
        srv.start()
        srv.deploy("lazy", "v1", instances=0, idle_timeout=1)
        wait_for(lambda: instances(srv, "lazy") or _wake(srv), what="a cold start")
        (pid,) = instances(srv, "lazy").values()
        srv.kill()
        srv.start()
        assert list(instances(srv, "lazy").values()) == [pid]
        wait_for(lambda: not alive(pid), timeout=30, what="the adopted instance idled out")
        assert srv.call("status", app="lazy")["state"] == "idle"
    finally:
        srv.cleanup()


def _wake(srv: TakoServer) -> bool:
    """One request through the proxy (HTTPS: routed hosts are served there), which cold-starts the app."""
    assert srv.https_port is not None
    raw = socket.create_connection(("127.0.0.1", srv.https_port), timeout=30)
    with CLIENT_TLS.wrap_socket(raw, server_hostname="lazy.tako.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: lazy.tako.test\r\nConnection: close\r\n\r\n")
        while tls.recv(65536):
            pass
    return False


def test_sigquit_leaves_the_instances_running_and_sigterm_stops_them(srv: TakoServer) -> None:
    srv.deploy("web", "v1", instances=1)
    (pid,) = instances(srv, "web").values()
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGQUIT)
    assert srv.proc.wait(30) == 0
    assert alive(pid)
    srv.start()
    assert list(instances(srv, "web").values()) == [pid]
    assert srv.stop() == 0
    wait_for(lambda: not alive(pid), what="the instance stopped with the server")
