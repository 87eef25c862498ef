"""tako-server-service on a testbed host (no systemd) after a SIGKILL of tako-server, for root and for the
tako user: its supervisor starts exactly one server again (which adopts the app's instance), `status` and
`start` tell the truth, `restart` never leaves a second one running, and the app serves afterwards."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.projects import body_and_status, curl, wait_for
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

APP = "svc"
ROUTE = "svc.tako.test"
APP_DIR = f"/opt/tako/apps/{APP}"
RELEASE = f"{APP_DIR}/releases/v1"
LOCK = "/opt/tako/tako-server.lock"
VENV_PYTHON = "/opt/tako-server/venv/bin/python"
TESTAPP = Path(__file__).resolve().parents[1] / "support" / "apps" / "testapp.py"

CONTROL = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect("/var/run/tako/tako.sock")
s.sendall(sys.argv[1].encode() + b"\\n")
print(s.makefile("rb").readline().decode().strip())
"""


def control(host: Host, command: str, **fields: object) -> dict[str, object]:
    line = json.dumps({"command": command, **fields})
    proc = host.exec([VENV_PYTHON, "-c", CONTROL, line], user="tako", check=True)
    reply: dict[str, object] = json.loads(proc.stdout)
    assert reply["status"] == "ok", reply
    return reply


def service(host: Host, action: str, user: str) -> tuple[int, str]:
    proc = host.exec(["tako-server-service", action], user=user, timeout=90)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def servers_on(host: Host) -> list[int]:
    """Live tako-server processes of this host (processes of every host share the pid space: the host's
    own are those in its mount namespace)."""
    mnt = os.stat(f"/proc/{host.pid}/ns/mnt").st_ino
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            same_host = os.stat(f"/proc/{entry}/ns/mnt").st_ino == mnt
        except OSError:
            continue
        if same_host and state != "Z" and any(a.endswith(b"/bin/tako-server") for a in argv[:2]):
            found.append(int(entry))
    return found


def the_server(host: Host) -> int:
    """The one tako-server of the host (waits for a start in progress to settle)."""
    wait_for(lambda: len(servers_on(host)) == 1, timeout=30, what="exactly one tako-server")
    (pid,) = servers_on(host)
    return pid


def serves(host: Host) -> bool:
    body, status = body_and_status(curl(host.address, ROUTE))
    return status == 200 and body.startswith("version=v1")


def kill_9(host: Host) -> int:
    """SIGKILL the server; returns the pid of the one the supervisor starts in its place, once it serves."""
    pid = the_server(host)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: servers_on(host) not in ([], [pid]), timeout=30, what="a tako-server in its place")
    wait_serving(host)
    return the_server(host)


def wait_serving(host: Host) -> None:
    """Until tako-server's control socket answers (it opens last; the listeners may answer before)."""
    hello = [VENV_PYTHON, "-c", CONTROL, json.dumps({"command": "hello"})]
    wait_for(lambda: host.exec(hello, user="tako").returncode == 0, timeout=60, what="tako-server serving")


def instance_pids(host: Host) -> list[int]:
    reply = control(host, "status", app=APP)
    return [i["pid"] for i in reply["data"]["instances"]]  # type: ignore[index]


def deploy_svc(host: Host) -> None:
    """App `svc` (one always-on instance of the test app) deployed through the control socket."""
    host.exec(f"mkdir -p {RELEASE} {APP_DIR}/shared/logs", user="tako", check=True)
    host.exec(f"cat > {RELEASE}/testapp.py", user="tako", input=TESTAPP.read_text(), check=True)
    meta = {"name": APP, "version": "v1", "start": "python3 testapp.py", "env": "production"}
    host.exec(f"cat > {RELEASE}/app.json", user="tako", input=json.dumps(meta), check=True)
    host.exec(f"umask 077 && printf 'TAKO_BUILD=\"v1\"\\n' > {RELEASE}/.env", user="tako", check=True)
    control(host, "deploy", app=APP, version="v1", path=RELEASE, routes=[ROUTE], instances=1)
    wait_for(lambda: serves(host), timeout=30, what="the app serving")


@pytest.fixture(scope="module")
def host(testbed: Testbed) -> Iterator[Host]:
    """A host with app `svc` (one always-on instance of the test app) deployed through the control socket."""
    (host,) = testbed.up("svc")
    deploy_svc(host)
    try:
        yield host
    finally:
        testbed.down("svc")


@pytest.mark.parametrize("user", ["tako", "root"])
def test_after_a_kill_9_the_supervisor_starts_one_server_that_adopts_the_app(host: Host, user: str) -> None:
    # The server the installer (root) started, or the one `start` (as tako) started in the previous case.
    wait_for(lambda: serves(host), timeout=60, what="the app serving")
    wait_serving(host)  # the listeners (and a worker) answer before the control socket opens
    before = instance_pids(host)
    pid = kill_9(host)
    wait_for(lambda: serves(host), timeout=60, what="the app serving after the kill")
    assert instance_pids(host) == before  # adopted, not restarted
    assert host.exec(f"cat {LOCK}", check=True).stdout.strip() == str(pid)

    # Stopped, and started again by `user`: one server, running under a supervisor too.
    assert service(host, "stop", user) == (0, "tako-server stopped")
    assert service(host, "status", user) == (3, "inactive")
    code, out = service(host, "start", user)
    assert code == 0, out
    pid = the_server(host)
    assert f"tako-server started (pid {pid})" in out
    wait_for(lambda: serves(host), timeout=60, what="the app serving after start")

    for who in ("tako", "root"):
        assert service(host, "status", who) == (0, "active")
        code, out = service(host, "start", who)
        assert (code, out) == (0, f"tako-server is already running (pid {pid})")
    assert servers_on(host) == [pid]


def test_restart_after_a_kill_9_runs_exactly_one_server(host: Host) -> None:
    kill_9(host)
    code, out = service(host, "restart", "tako")
    assert code == 0, out
    first = the_server(host)
    wait_for(lambda: serves(host), timeout=60, what="the app serving after restart")

    # A restart of a running server replaces it: still one server, a new pid, the app back.
    code, out = service(host, "restart", "root")
    assert code == 0, out
    second = the_server(host)
    assert second != first
    wait_for(lambda: serves(host), timeout=60, what="the app serving after the second restart")
    assert servers_on(host) == [second]
    assert service(host, "status", "tako") == (0, "active")


def test_a_start_that_fails_says_why_and_leaves_nothing_running(host: Host) -> None:
    config = "/opt/tako/server-config.toml"
    code, out = service(host, "stop", "tako")
    assert (code, out) == (0, "tako-server stopped"), out
    host.exec(f"cp -p {config} {config}.saved", check=True)
    host.exec(f"cat > {config}", input='[server]\nhttp_port = "x"\n', check=True)
    try:
        code, out = service(host, "start", "tako")
        assert code == 1, out
        assert "error: tako-server exited at once (status 2)" in out and "http_port" in out, out
        assert service(host, "status", "root") == (3, "inactive")
        assert servers_on(host) == []
    finally:
        host.exec(f"mv -f {config}.saved {config}", check=True)
    code, out = service(host, "start", "tako")
    assert code == 0, out
    the_server(host)
    wait_for(lambda: serves(host), timeout=60, what="the app serving after the fixed start")


def test_the_installed_tako_package_has_bytecode_its_user_need_not_write(host: Host) -> None:
    # tako-server runs as tako, who cannot write __pycache__ in the root-owned venv: without bytecode made
    # at install, every start would compile its modules again (slower to serve again after a crash).
    code = (
        "import importlib.util, pathlib, tako.server.daemon as m; "
        "print(pathlib.Path(importlib.util.cache_from_source(m.__file__)).is_file())"
    )
    assert host.exec([VENV_PYTHON, "-c", code], user="tako", check=True).stdout.strip() == "True"
