"""End to end day-2 operations on three testbed hosts: status, logs, servers status/restart/reload, delete,
and the off-terminal errors that must say what to do instead of prompting."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_hosts, user_ssh_env
from tests.support.projects import body_and_status, curl, git, make_project, wait_for
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

NAMES = ("d2-a", "d2-b", "d2-c")
ROUTE = "day2.tako.test"


@dataclass
class Deployed:
    hosts: list[Host]
    cli: TakoCLI
    project: Path
    version: str

    @property
    def env(self) -> dict[str, str]:
        return user_ssh_env(self.hosts[0])


@pytest.fixture(scope="module")
def deployed(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """App `day2` deployed to three hosts, one always-on instance each, with its own TAKO_HOME."""
    hosts = testbed.up(*NAMES)
    cli = cli_with_hosts(hosts, tmp_path_factory)
    env = user_ssh_env(hosts[0])
    project = make_project(
        tmp_path_factory.mktemp("d2-project"),
        name="day2",
        route=ROUTE,
        servers={h.name: "production" for h in hosts},
        extra_toml='\n[envs.staging]\nroute = "staging.day2.tako.test"\n',
    )
    cli.ok("deploy", "--yes", cwd=project, env=env)
    yield Deployed(hosts, cli, project, git(project, "rev-parse", "--short=7", "HEAD"))


def serves(host: Host, version: str) -> bool:
    body, status = body_and_status(curl(host.address, ROUTE))
    return status == 200 and f"build {version}" in body


def instance_pids(d: Deployed, host: Host) -> list[int]:
    out = d.cli.ok("status", "--json", env=d.env).stdout
    for server in json.loads(out):
        if server["server"] == host.name:
            return [i["pid"] for app in server["apps"] for i in app["instances"]]
    raise AssertionError(f"{host.name} missing from status --json: {out}")


def test_status_shows_every_server_and_app(deployed: Deployed) -> None:
    d = deployed
    doc = json.loads(d.cli.ok("status", "--json", env=d.env).stdout)
    assert sorted(s["server"] for s in doc) == sorted(NAMES)
    for server in doc:
        assert server["reachable"] is True and server["error"] is None
        assert server["server_version"]
        (app,) = server["apps"]
        assert app["app"] == "day2" and app["version"] == d.version and app["env"] == "production"
        assert [i["healthy"] for i in app["instances"]] == [True]
        assert app["deployed_at"]

    text = d.cli.ok("status", env=d.env).stdout
    for host in d.hosts:
        assert f"✓ {host.name} ({host.address}): tako-server" in text and "active, 1 app" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("day2 ")]
    assert len(rows) == 3, text
    for row in rows:
        # app, env, state, healthy/total, version, deployed date and local time
        assert row[1] == "production" and row[3] == "1/1" and row[4] == d.version, row


def test_logs_prefix_every_line_with_its_server(deployed: Deployed) -> None:
    d = deployed
    for host in d.hosts:
        assert serves(host, d.version)

    def logged() -> list[str] | None:
        proc = d.cli.run("logs", "--no-follow", "-n", "20", cwd=d.project, env=d.env)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or not all(
            any(line.startswith(f"[{h.name}] ") and "GET / " in line for line in lines) for h in d.hosts
        ):
            return None
        return lines

    wait_for(lambda: logged() is not None, timeout=15, what="request lines from every host in `tako logs`")
    lines = logged() or []
    assert lines and all(line.startswith(tuple(f"[{n}] " for n in NAMES)) for line in lines), lines
    assert all(line.split("] ", 1)[1].strip() for line in lines), lines  # no bare "[server] " line


def test_status_reports_an_unreachable_server(deployed: Deployed, testbed: Testbed) -> None:
    d = deployed
    cut = d.hosts[2]
    testbed.cut(cut.name)
    try:
        result = d.cli.run("status", env=d.env)
        as_json = d.cli.run("status", "--json", env=d.env)
    finally:
        testbed.heal(cut.name)
    assert result.returncode == 1
    assert f"✗ {cut.name} ({cut.address}): unreachable" in result.stdout, result.stdout
    for host in d.hosts[:2]:
        assert f"✓ {host.name} ({host.address}): tako-server" in result.stdout
    doc = {s["server"]: s for s in json.loads(as_json.stdout)}
    assert doc[cut.name]["reachable"] is False and doc[cut.name]["error"]
    assert doc[d.hosts[0].name]["reachable"] is True


def test_logs_follow_streams_new_lines_and_ctrl_c_ends_cleanly(deployed: Deployed) -> None:
    d = deployed
    host = d.hosts[0]
    proc = subprocess.Popen(
        [d.cli.executable, "logs", "--follow", "-n", "0"],
        cwd=d.project,
        env={**d.cli.env(d.env), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        marker = f"/follow-{time.monotonic_ns()}"

        def arrived() -> bool:
            curl(host.address, ROUTE, marker)
            return any(line.startswith(f"[{host.name}] ") and marker in line for line in list(seen))

        wait_for(
            arrived, timeout=20, what="a new request line streamed by `tako logs --follow`", interval=0.5
        )
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_servers_status(deployed: Deployed) -> None:
    d = deployed
    host = d.hosts[0]
    out = d.cli.ok("servers", "status", host.name, env=d.env).stdout
    assert f"{host.name}: tako-server installed, version" in out and "service active" in out, out
    assert "day2" in out and "1/1" in out and d.version in out

    stopped = d.hosts[1]
    stopped.exec("tako-server-service stop", check=True)
    try:
        down = d.cli.run("servers", "status", stopped.name, env=d.env)
    finally:
        stopped.exec("tako-server-service start", check=True)
    assert down.returncode == 1
    assert "service inactive" in down.stdout, down.stdout + down.stderr
    assert "control socket" in down.stderr
    wait_for(lambda: serves(stopped, d.version), timeout=30, what="the app back after the server restart")


def test_servers_restart_brings_apps_back(deployed: Deployed) -> None:
    d = deployed
    host = d.hosts[1]
    before = host.exec("cat /var/run/tako/tako-server.pid", check=True).stdout.strip()
    out = d.cli.ok("servers", "restart", host.name, env=d.env).stdout
    assert f"restarted on {host.name}" in out
    after = host.exec("cat /var/run/tako/tako-server.pid", check=True).stdout.strip()
    assert after and after != before
    wait_for(lambda: serves(host, d.version), timeout=30, what="the app serving after `servers restart`")


def test_servers_reload_replaces_instances_without_downtime(deployed: Deployed) -> None:
    d = deployed
    host = d.hosts[2]
    before = instance_pids(d, host)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(body_and_status(curl(host.address, ROUTE))[1])

    client = threading.Thread(target=hammer)
    client.start()
    try:
        out = d.cli.ok("servers", "reload", host.name, env=d.env).stdout
    finally:
        stop.set()
        client.join(timeout=30)
    assert f"Reloaded 1 app(s) on {host.name}: day2." in out, out
    after = instance_pids(d, host)
    assert len(after) == 1 and not set(after) & set(before), (before, after)
    assert statuses and set(statuses) == {200}, statuses


def test_off_terminal_errors_say_what_to_do(deployed: Deployed) -> None:
    d = deployed
    # stdin is a pipe (input=""), so the CLI knows it cannot ask.
    staging = d.cli.run("deploy", "--env", "staging", cwd=d.project, env=d.env, input="")
    assert staging.returncode != 0
    assert "no server is mapped to environment 'staging'" in staging.stderr, staging.stderr
    assert '[servers.<name>] env = "staging"' in staging.stderr and "d2-a" in staging.stderr

    production = d.cli.run("deploy", cwd=d.project, env=d.env, input="")
    assert production.returncode != 0 and "--yes" in production.stderr, production.stderr

    rm = d.cli.run("servers", "rm", "d2-a", env=d.env, input="")
    assert rm.returncode != 0
    assert "without confirmation" in rm.stderr and "tako servers rm d2-a --yes" in rm.stderr, rm.stderr
    assert "d2-a" in d.cli.ok("servers", "ls", env=d.env).stdout  # still there

    delete = d.cli.run("delete", cwd=d.project, env=d.env, input="")
    assert delete.returncode != 0 and "--yes" in delete.stderr, delete.stderr
    for host in d.hosts:
        assert serves(host, d.version)


def test_delete_removes_the_app_everywhere(deployed: Deployed) -> None:
    d = deployed
    out = d.cli.ok("delete", "--env", "production", "--yes", cwd=d.project, env=d.env).stdout
    for host in d.hosts:
        assert f"✓ {host.name}: day2 deleted" in out, out
        # Unrouted now: plain HTTP answers 404 (HTTPS refuses the handshake for an unknown name).
        _, status = body_and_status(curl(host.address, ROUTE, https=False))
        assert status == 404
        assert body_and_status(curl(host.address, ROUTE))[1] != 200
        assert host.exec("ls -A /opt/tako/apps", user="tako").stdout.split() == []
    doc = json.loads(d.cli.ok("status", "--json", env=d.env).stdout)
    assert all(server["apps"] == [] for server in doc)
