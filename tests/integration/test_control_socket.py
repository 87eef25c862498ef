"""The control socket of a real tako-server: protocol errors, socket file, per-command errors."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server_process import ControlClient, ControlError, TakoServer, make_release

from tako import __version__
from tako.protocol import MAX_INSTANCES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[TakoServer]:
    srv = TakoServer()
    try:
        yield srv.start()
    finally:
        srv.cleanup()


def test_hello(server: TakoServer) -> None:
    data = server.call("hello")
    assert data["protocol"] == 1
    assert data["server_version"]
    assert set(data["capabilities"]) >= {"deploy", "status", "list", "routes", "stop", "delete", "reload"}


def test_bad_lines_get_errors_and_the_connection_stays_usable(server: TakoServer) -> None:
    c = server.client()
    try:
        r = c.send_line(b"{not json\n")
        assert r["status"] == "error" and "not valid JSON" in r["message"]
        r = c.send_line(b'{"command": "frobnicate"}\n')
        assert r["status"] == "error" and "unknown command 'frobnicate'" in r["message"]
        r = c.send_line(b'{"command": "status"}\n')
        assert r["status"] == "error" and "app" in r["message"]
        r = c.send_line(b'{"command": "list", "extra": 1}\n')
        assert r["status"] == "error" and "unknown fields" in r["message"]
        r = c.send_line(b'{"command": "hello", "x": "' + b"a" * (2 * 1024 * 1024) + b'"}\n')
        assert r["status"] == "error" and "longer than" in r["message"]
        r = c.send_line(b'{"command": "hello"}\n')
        assert r["status"] == "ok"
    finally:
        c.close()


def test_socket_is_owner_only(server: TakoServer) -> None:
    mode = server.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_unknown_app_errors(server: TakoServer) -> None:
    for command in ("status", "stop", "delete", "reload"):
        with pytest.raises(ControlError, match="unknown app 'ghost'"):
            server.call(command, app="ghost")


def test_deploy_errors_are_clear(server: TakoServer) -> None:
    with pytest.raises(ControlError, match="does not exist"):
        server.call("deploy", app="nodir", version="v1", path="/nonexistent/x", routes=["n.tako.test"])
    with pytest.raises(ControlError, match="invalid route"):
        server.deploy("badroute", "v1", routes=("/only/path",))
    with pytest.raises(ControlError, match="invalid app name"):
        server.call("deploy", app="Bad_Name", version="v1", path="/tmp", routes=["b.tako.test"])


def test_deploy_asking_for_too_many_instances_is_refused_before_any_starts(server: TakoServer) -> None:
    path = make_release(server.data_dir, "greedy", "v1")
    with pytest.raises(ControlError, match=f"'instances' must be at most {MAX_INSTANCES}, got 1000000"):
        server.call(
            "deploy",
            app="greedy",
            version="v1",
            path=str(path),
            routes=["greedy.tako.test"],
            instances=1000000,
        )
    assert "greedy" not in [a["app"] for a in server.call("list")]
    greedy_dir = str(server.data_dir / "apps" / "greedy")
    assert not [p for p in server.instance_processes() if p.info["cwd"].startswith(greedy_dir)]
    # Within the limit the same release deploys.
    data = server.call(
        "deploy", app="greedy", version="v1", path=str(path), routes=["greedy.tako.test"], instances=1
    )
    assert data["state"] == "running"
    server.call("delete", app="greedy")


def test_route_conflict_is_refused_by_the_server(server: TakoServer) -> None:
    server.deploy("owner", "v1", routes=("shared.tako.test",), instances=0)
    with pytest.raises(ControlError) as err:
        server.deploy("intruder", "v1", routes=("SHARED.tako.test/*",), instances=0)
    assert "already used by app 'owner'" in err.value.message
    assert "intruder" not in server.call("routes")
    # A different path on the same host is not a conflict.
    server.deploy("api", "v1", routes=("shared.tako.test/api/*",), instances=0)
    routes = server.call("routes")
    assert routes["owner"] == ["shared.tako.test"] and routes["api"] == ["shared.tako.test/api/*"]
    for app in ("owner", "api"):
        server.call("delete", app=app)


def test_concurrent_deploys_of_one_app_are_refused(server: TakoServer) -> None:
    path = make_release(server.data_dir, "slowboot", "v1", {"BOOT_DELAY": "1.5"})
    results: list[object] = []

    def first() -> None:
        results.append(
            server.call(
                "deploy", app="slowboot", version="v1", path=str(path), routes=["slow.tako.test"], instances=1
            )
        )

    t = threading.Thread(target=first)
    t.start()
    try:
        # Wait until the first deploy is registered, then try a second one.
        from tests.support.server_process import wait_for

        wait_for(lambda: "slowboot" in [a["app"] for a in server.call("list")], what="first deploy to start")
        with pytest.raises(ControlError, match="already in progress"):
            server.call(
                "deploy", app="slowboot", version="v1", path=str(path), routes=["slow.tako.test"], instances=1
            )
    finally:
        t.join(60)
    assert results and results[0]["state"] == "running"  # type: ignore[index]
    server.call("delete", app="slowboot")


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = TakoServer()
    try:
        srv.socket.parent.mkdir(parents=True, exist_ok=True)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(srv.socket))
        stale.close()  # the file stays, nobody listens: stale
        srv.start()
        assert srv.call("hello")["protocol"] == 1
        second = subprocess.run(
            srv.command(data_dir=srv.base / "data2"), capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert "another tako-server is already listening on" in second.stderr
        # The first server still owns the socket.
        c = ControlClient(srv.socket)
        assert c.call("hello")["pid"] == srv.proc.pid  # type: ignore[union-attr]
        c.close()
    finally:
        srv.cleanup()


def test_list_and_status_shape(server: TakoServer) -> None:
    server.deploy("shape", "v1", instances=1)
    data = server.call("status", app="shape")
    assert set(data) >= {
        "app",
        "version",
        "state",
        "path",
        "routes",
        "instances",
        "min_instances",
        "idle_timeout",
        "deployed_at",
        "last_error",
    }
    assert data["deployed_at"].endswith("Z")
    inst = data["instances"][0]
    assert set(inst) >= {"id", "state", "port", "pid", "healthy", "started_at", "restarts"}
    assert inst["healthy"] is True and inst["restarts"] == 0
    assert [a["app"] for a in server.call("list")].count("shape") == 1
    json.dumps(server.call("list"))
    server.call("delete", app="shape")


def test_version_and_config_errors(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "tako.server.main"]
    out = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"tako-server {__version__}"
    bad = tmp_path / "server-config.toml"
    bad.write_text("[apps]\nhealth_intervall = 1\n")
    out = subprocess.run([*run, "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "tako-server: error:" in out.stderr and "apps.health_intervall: unknown key" in out.stderr
    assert "did you mean 'health_interval'?" in out.stderr
