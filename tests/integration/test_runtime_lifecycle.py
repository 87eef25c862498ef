"""The app runtime of a real tako-server, observed through the control socket and the instances' ports:
instances, env, logs, rolling updates, rollback of broken releases, crash replacement, stop, restart."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psutil
import pytest
from tests.support.server_process import ControlError, TakoServer, get, make_release, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[TakoServer]:
    srv = TakoServer(app_settings={"healthy_timeout": 3.0})
    try:
        yield srv.start()
    finally:
        srv.cleanup()


def versions(server: TakoServer, app: str) -> list[str]:
    return [get(i["port"])[1].split()[0] for i in server.call("status", app=app)["instances"]]


def test_deploy_starts_healthy_instances_with_their_env_and_logs(server: TakoServer) -> None:
    data = server.deploy("web", "v1", instances=3, env={"SECRET_X": 'a "quoted" $value'})
    assert data["state"] == "running" and data["version"] == "v1"
    insts = data["instances"]
    assert len(insts) == 3 and all(i["healthy"] for i in insts)
    assert len({i["port"] for i in insts}) == 3
    port = insts[0]["port"]
    assert get(port, "/env/SECRET_X") == (200, 'a "quoted" $value')
    assert get(port, "/env/TAKO_APP") == (200, "web")
    assert get(port, "/env/TAKO_INSTANCE") == (200, insts[0]["id"])
    assert get(port, "/env/PORT") == (200, str(port))
    assert get(port, "/env/HOST") == (200, "127.0.0.1")
    # Never the server's own environment.
    assert get(port, "/env/PYTHONPATH") == (200, "")
    log = wait_for(lambda: server.app_log("web") if "listening" in server.app_log("web") else "")
    for inst in insts:
        assert f"[{inst['id']}] booting version v1 on port {inst['port']}" in log
    # Each instance is its own process group (stop signals reach the whole group).
    for inst in insts:
        assert os.getpgid(inst["pid"]) == inst["pid"]


def test_rolling_update_replaces_every_instance(server: TakoServer) -> None:
    old = server.deploy("web", "v1", instances=3)
    old_pids = {i["pid"] for i in old["instances"]}
    new = server.deploy("web", "v2", instances=3)
    assert new["version"] == "v2" and new["last_error"] is None
    assert versions(server, "web") == ["version=v2"] * 3
    assert not old_pids & {i["pid"] for i in new["instances"]}
    wait_for(
        lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in old_pids)
    )
    assert "rolling update to v2 done" in server.app_log("web")


def test_scale_change_on_deploy(server: TakoServer) -> None:
    server.deploy("web", "v1", instances=1)
    assert len(server.deploy("web", "v2", instances=3)["instances"]) == 3
    assert len(server.deploy("web", "v3", instances=2)["instances"]) == 2
    assert versions(server, "web") == ["version=v3"] * 2


@pytest.mark.parametrize(
    ("env", "cause"),
    [
        ({"CRASH_AT_BOOT": "1"}, "boom: cannot boot"),
        ({"NEVER_HEALTHY": "1"}, "did not answer /_tako/status with a status below 500 within 3 s"),
        ({"CRASH_AFTER_REQUESTS": "1"}, "exited with status 4"),
    ],
    ids=["exits-at-boot", "never-healthy", "healthy-then-crashes"],
)
def test_broken_release_never_replaces_a_working_one(
    server: TakoServer, env: dict[str, str], cause: str
) -> None:
    v1 = server.deploy("web", "v1", instances=2)
    v1_pids = sorted(i["pid"] for i in v1["instances"])
    with pytest.raises(ControlError) as err:
        server.deploy("web", "v2", instances=2, env=env)
    message = err.value.message
    assert "deploy of web v2 failed, v1 keeps serving" in message
    assert "instance " in message and cause in message
    status = server.call("status", app="web")
    assert status["version"] == "v1"
    assert status["path"].endswith("/releases/v1")
    assert cause in status["last_error"]
    assert sorted(i["pid"] for i in status["instances"]) == v1_pids
    assert versions(server, "web") == ["version=v1"] * 2
    # No instance of v2 is left running.
    assert all("releases/v2" not in (p.cwd() or "") for p in server.instance_processes())


def test_broken_first_deploy_is_refused_and_not_registered(server: TakoServer) -> None:
    with pytest.raises(ControlError, match="boom: cannot boot"):
        server.deploy("web", "v1", instances=1, env={"CRASH_AT_BOOT": "1"})
    assert server.call("list") == []
    assert server.call("routes") == {}


def test_kill_9_instance_is_replaced_and_reported(server: TakoServer) -> None:
    data = server.deploy("web", "v1", instances=2)
    victim = data["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> dict[str, object] | None:
        st = server.call("status", app="web")
        ids = [i["id"] for i in st["instances"]]
        healthy = [i for i in st["instances"] if i["healthy"]]
        return st if victim["id"] not in ids and len(healthy) == 2 else None

    st = wait_for(replaced, what="the killed instance to be replaced")
    new = next(i for i in st["instances"] if i["id"] != data["instances"][1]["id"])
    assert new["restarts"] == 1
    assert get(new["port"])[0] == 200
    assert "was killed by SIGKILL" in st["last_error"]
    log = server.app_log("web")
    assert f"[tako] instance {victim['id']} was killed by SIGKILL" in log
    assert f"replaced failed instance {victim['id']}" in log


def test_crash_is_restarted_with_backoff(server: TakoServer) -> None:
    server.deploy("web", "v1", instances=1, env={"CRASH_AFTER_SECONDS": "0.5"})
    st = wait_for(
        lambda: (
            (s := server.call("status", app="web"))["instances"] and s["instances"][0]["restarts"] >= 2 and s
        ),
        timeout=30,
        what="two restarts",
    )
    assert "exited with status 5" in st["last_error"]
    assert "crashing after 0.5 s" in st["last_error"]
    assert "restarting in" in server.app_log("web")


def test_stop_kills_the_whole_group_and_ignoring_sigterm_gets_sigkill(server: TakoServer) -> None:
    data = server.deploy("web", "v1", instances=1, env={"SPAWN_CHILD": "1", "IGNORE_SIGTERM": "1"})
    pid = data["instances"][0]["pid"]
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == pid]
    assert any("sleep" in " ".join(p.cmdline()) for p in group)
    st = server.call("stop", app="web")
    assert st["state"] == "stopped" and st["instances"] == []
    assert all(not p.is_running() or p.status() == "zombie" for p in group)
    assert "did not stop within 3 s: killed" in server.app_log("web")
    # A stopped app stays registered and comes back with a deploy.
    assert server.call("routes") == {"web": ["web.tako.test"]}
    assert server.deploy("web", "v1", instances=1)["state"] == "running"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_delete_forgets_the_app(server: TakoServer) -> None:
    data = server.deploy("web", "v1", instances=1)
    server.call("delete", app="web")
    assert server.call("list") == [] and server.call("routes") == {}
    assert (
        not psutil.pid_exists(data["instances"][0]["pid"])
        or psutil.Process(data["instances"][0]["pid"]).status() == "zombie"
    )


def test_reload_applies_a_changed_env(server: TakoServer) -> None:
    data = server.deploy("web", "v1", instances=2, env={"GREETING": "hello"})
    release = make_release(server.data_dir, "web", "v1", {"GREETING": "bonjour"})
    assert release == server.data_dir / "apps/web/releases/v1"
    st = server.call("reload", app="web")
    assert st["version"] == "v1"
    assert {i["id"] for i in st["instances"]}.isdisjoint({i["id"] for i in data["instances"]})
    assert all(get(i["port"], "/env/GREETING")[1] == "bonjour" for i in st["instances"])


def test_sigkill_restart_restores_routes_and_always_on_apps() -> None:
    srv = TakoServer()
    try:
        srv.start()
        srv.deploy("always", "v1", instances=2)
        srv.deploy("lazy", "v1", instances=0, routes=("lazy.tako.test", "x.tako.test/api/*"))
        srv.deploy("halted", "v1", instances=1)
        srv.call("stop", app="halted")
        old_pids = [i["pid"] for i in srv.call("status", app="always")["instances"]]
        srv.kill()
        srv.start()
        assert srv.call("routes") == {
            "always": ["always.tako.test"],
            "halted": ["halted.tako.test"],
            "lazy": ["lazy.tako.test", "x.tako.test/api/*"],
        }
        # The listeners and the control socket open at once; the always-on instances come up behind them.
        always = wait_for(
            lambda: (st := srv.call("status", app="always"))["state"] == "running" and st, what="running"
        )
        assert always["version"] == "v1"
        assert len(always["instances"]) == 2 and all(i["healthy"] for i in always["instances"])
        assert all(get(i["port"])[1].startswith("version=v1") for i in always["instances"])
        assert srv.call("status", app="lazy")["state"] == "idle"
        assert srv.call("status", app="halted")["state"] == "stopped"
        # The instances outlived the killed server and were adopted, not restarted (test_adoption.py).
        assert sorted(i["pid"] for i in always["instances"]) == sorted(old_pids)
    finally:
        srv.cleanup()


def test_sigterm_stops_instances_and_exits_cleanly() -> None:
    srv = TakoServer()
    try:
        srv.start()
        data = srv.deploy("web", "v1", instances=2)
        assert srv.stop() == 0
        assert srv.instance_processes() == []
        assert not srv.socket.exists()
        assert all(not psutil.pid_exists(i["pid"]) for i in data["instances"])
    finally:
        srv.cleanup()


def test_health_checks_take_a_hung_instance_out_bring_it_back_and_replace_it(server: TakoServer) -> None:
    data = server.deploy("web", "v1", instances=2)
    victim = data["instances"][0]
    app_pid = psutil.Process(victim["pid"]).children()[0].pid  # the app under its start shell

    def state_of(inst_id: str) -> str | None:
        for i in server.call("status", app="web")["instances"]:
            if i["id"] == inst_id:
                return str(i["state"])
        return None

    os.kill(app_pid, signal.SIGSTOP)
    wait_for(lambda: state_of(victim["id"]) == "unhealthy", what="out of rotation")
    os.kill(app_pid, signal.SIGCONT)
    wait_for(lambda: state_of(victim["id"]) == "healthy", what="back in rotation")
    os.kill(app_pid, signal.SIGSTOP)

    def replaced() -> bool:
        insts = server.call("status", app="web")["instances"]
        return state_of(victim["id"]) is None and len([i for i in insts if i["healthy"]]) == 2

    wait_for(replaced, timeout=30, what="the hung instance to be replaced")
    log = server.app_log("web")
    assert f"[tako] instance {victim['id']} failed 2 health checks" in log
    assert f"[tako] instance {victim['id']} is healthy again" in log
    assert f"[tako] instance {victim['id']} failed 5 health checks in a row and was replaced" in log
    wait_for(lambda: not psutil.pid_exists(app_pid) or psutil.Process(app_pid).status() == "zombie")
