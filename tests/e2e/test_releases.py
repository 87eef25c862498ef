"""End to end on two testbed hosts: `tako releases` lists what each server keeps; `tako rollback` switches
back to a kept release with its code and its secrets as deployed, without a failed request; a version one
server lacks fails there only; the app's data dir outlives deploys and rollbacks."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_server, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, make_project
from tests.support.testbed import Host, Testbed

from tako.deploy.lock import lock_holder

pytestmark = pytest.mark.e2e

NAMES = ("rl-a", "rl-b")
APP = "rel"
ROUTE = "rel.tako.test"
EXTRA_ROUTE = "rel2.tako.test"  # a route only a later release has
APP_DIR = f"/opt/tako/apps/{APP}"
DATA_DIR = f"{APP_DIR}/shared/data"

# /data appends a line to a file in TAKO_DATA_DIR and answers with the number of lines: the app's own
# writes, kept across releases.
DATA_ROUTE = """        elif self.path == "/data":
            path = os.path.join(os.environ["TAKO_DATA_DIR"], "visits.txt")
            with open(path, "a") as f:
                f.write("visit\\n")
            with open(path) as f:
                body = f"visits {len(f.readlines())}\\n".encode()
            content_type = "text/plain"
        else:
"""


@dataclass
class Fleet:
    hosts: list[Host]
    cli: TakoCLI
    project: Path
    first: str  # version deployed with GREETING=first
    second: str  # version deployed with GREETING=second

    @property
    def env(self) -> dict[str, str]:
        return user_ssh_env(self.hosts[0])

    def tako(self, *args: str) -> str:
        return self.cli.ok(*args, cwd=self.project, env=self.env).stdout

    def releases(self) -> dict[str, dict[str, Any]]:
        doc = json.loads(self.tako("releases", "--json"))
        return {server["server"]: server for server in doc}


def set_greeting(cli: TakoCLI, project: Path, env: dict[str, str], value: str) -> None:
    """The secret GREETING (the app answers with it), its value on stdin."""
    cli.ok("secrets", "set", "--env", "production", "GREETING", cwd=project, input=value + "\n", env=env)


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """App `rel` on two hosts: deployed with secret GREETING=first, then (new code) GREETING=second."""
    hosts = testbed.up(*NAMES)
    env = user_ssh_env(hosts[0])
    cli = cli_with_server(hosts[0], tmp_path_factory, NAMES[0])
    cli.ok("servers", "add", hosts[1].address, "--name", NAMES[1], env=env)
    project = make_project(
        tmp_path_factory.mktemp("rl-project"),
        name=APP,
        route=ROUTE,
        servers={name: "production" for name in NAMES},
    )
    # Keep two releases per server: the live one and one to roll back to.
    toml = project / "tako.toml"
    toml.write_text(toml.read_text().replace("[servers]\n", "[servers]\nkeep_releases = 2\n", 1))
    app = project / "app.py"
    app.write_text(app.read_text().replace("        else:\n", DATA_ROUTE, 1))
    first = commit_all(project, "First release")
    set_greeting(cli, project, env, "first")
    cli.ok("deploy", "--yes", cwd=project, env=env)
    (project / "NOTES.txt").write_text("second\n")
    second = commit_all(project, "Second release")
    set_greeting(cli, project, env, "second")
    cli.ok("deploy", "--yes", cwd=project, env=env)
    yield Fleet(hosts, cli, project, first, second)


def greeting(host: Host) -> tuple[str, int]:
    return body_and_status(curl(host.address, ROUTE))


def visits(host: Host) -> int:
    body, status = body_and_status(curl(host.address, ROUTE, "/data"))
    assert status == 200, body
    return int(body.split()[1])


def remote(host: Host, command: str) -> str:
    result = host.exec(command, user="tako")
    assert result.returncode == 0, f"{host.name}: {command}: {result.stderr}"
    return result.stdout.strip()


def test_releases_lists_every_kept_release_with_the_live_one(fleet: Fleet) -> None:
    doc = fleet.releases()
    assert sorted(doc) == sorted(NAMES)
    for server in doc.values():
        assert server["reachable"] is True and server["live"] == fleet.second
        listed = server["releases"]
        assert [r["version"] for r in listed] == [fleet.second, fleet.first]  # newest first
        assert [r["live"] for r in listed] == [True, False]
        assert [r["subject"] for r in listed] == ["Second release", "First release"]
        assert all(r["commit"] and "@" in r["deployed_by"] and r["size"] > 0 for r in listed), listed

    text = fleet.tako("releases")
    for name in NAMES:
        assert f"{name}: {APP}, live {fleet.second}, 2 release(s) kept" in text, text
    assert f"* {fleet.second}" in text and "Second release" in text and "First release" in text
    assert "disagree" not in text


def test_rollback_restores_the_old_code_and_secret_with_no_failed_request(fleet: Fleet) -> None:
    counts = {host.name: visits(host) for host in fleet.hosts}
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for host in fleet.hosts:
                statuses.append(greeting(host)[1])

    client = threading.Thread(target=hammer)
    client.start()
    try:
        out = fleet.tako("rollback", "--yes")
    finally:
        stop.set()
        client.join(timeout=60)
    for name in NAMES:
        assert f"✓ {name}: rolled back from {fleet.second} to {fleet.first}" in out, out
    assert "2/2 server(s) rolled back" in out
    assert statuses and set(statuses) == {200}, statuses
    for host in fleet.hosts:
        body, status = greeting(host)
        assert status == 200 and body.startswith(f"first! build {fleet.first}"), body
        # tako-server's state and `current` agree; no lock left behind; the data dir kept its file.
        assert remote(host, f"readlink {APP_DIR}/current") == f"releases/{fleet.first}"
        assert host.exec(f"test -e {APP_DIR}/.deploy_lock", user="tako").returncode != 0
        assert visits(host) == counts[host.name] + 1
    assert {s["live"] for s in fleet.releases().values()} == {fleet.first}


def test_rollback_to_a_version_one_server_lacks_fails_there_only(fleet: Fleet) -> None:
    lacking, keeping = fleet.hosts[1], fleet.hosts[0]
    remote(lacking, f"rm -rf {APP_DIR}/releases/{fleet.second}")
    result = fleet.cli.run("rollback", fleet.second, "--yes", cwd=fleet.project, env=fleet.env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"✓ {keeping.name}: rolled back from {fleet.first} to {fleet.second}" in result.stdout
    assert (
        f"✗ {lacking.name}: this server does not have release {fleet.second} (it keeps: {fleet.first})"
        in result.stdout
    ), result.stdout
    assert greeting(keeping)[0].startswith(f"second! build {fleet.second}")
    assert greeting(lacking)[0].startswith(f"first! build {fleet.first}")
    text = fleet.tako("releases")
    assert "servers disagree on the live release" in text, text
    assert f"{keeping.name} runs {fleet.second}" in text and f"{lacking.name} runs {fleet.first}" in text


def test_rollback_respects_a_held_lock_and_breaks_a_stale_one_of_ours(fleet: Fleet) -> None:
    held, other = fleet.hosts  # live: `second` on the first host, `first` on the other
    lock = f"{APP_DIR}/.deploy_lock"
    foreign = "ana@laptop pid 1 deploying abc1234 since 2026-01-01T00:00:00Z"
    remote(held, f"mkdir {lock} && echo '{foreign}' > {lock}/holder")
    try:
        result = fleet.cli.run("rollback", fleet.first, "--yes", cwd=fleet.project, env=fleet.env)
    finally:
        remote(held, f"rm -rf {lock}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"✗ {held.name}: another deploy holds the lock {lock} ({foreign})" in result.stdout, result.stdout
    assert f"✓ {other.name}: {fleet.first} is already live" in result.stdout
    assert greeting(held)[0].startswith(f"second! build {fleet.second}")

    # A lock of this user and machine whose process is gone was left by an interrupted deploy: broken.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = lock_holder("abc1234").replace(f" pid {os.getpid()} ", f" pid {gone.pid} ")
    remote(held, f"mkdir {lock} && echo '{stale}' > {lock}/holder")
    out = fleet.tako("rollback", fleet.first, "--yes")
    assert f"✓ {held.name}: rolled back from {fleet.second} to {fleet.first}" in out, out
    assert greeting(held)[0].startswith(f"first! build {fleet.first}")
    assert held.exec(f"test -e {lock}", user="tako").returncode != 0


def test_deploy_after_rollback_works_keeps_the_data_dir_and_prunes_to_keep_releases(fleet: Fleet) -> None:
    counts = {host.name: visits(host) for host in fleet.hosts}
    (fleet.project / "NOTES.txt").write_text("third\n")
    third = commit_all(fleet.project, "Third release")
    out = fleet.tako("deploy", "--yes")
    assert "2/2 server(s) succeeded" in out, out
    for host in fleet.hosts:
        assert greeting(host)[0].startswith(f"second! build {third}")
        assert remote(host, f"readlink {APP_DIR}/current") == f"releases/{third}"
        assert visits(host) == counts[host.name] + 1
        # The app's own uid (isolation: each app its own uid) wrote the file; the dir is its group's.
        owner, group = remote(host, f"stat -c '%u %g' {DATA_DIR}/visits.txt").split()
        assert int(owner) >= 200_000 and remote(host, f"stat -c %g {DATA_DIR}") == group == owner
    doc = fleet.releases()
    assert {s["live"] for s in doc.values()} == {third}
    kept = {name: [r["version"] for r in server["releases"]] for name, server in doc.items()}
    # keep_releases = 2: the live one and the newest other; the second host had lost `second` already.
    assert kept == {NAMES[0]: [third, fleet.second], NAMES[1]: [third, fleet.first]}, kept


def test_rollback_restores_the_routes_and_instances_the_release_was_deployed_with(fleet: Fleet) -> None:
    # The next release adds a route and an instance; rolling back to the one before takes both away again:
    # tako.toml is part of the release, so a rollback gives what deploying that commit gave.
    (live,) = {s["live"] for s in fleet.releases().values()}
    toml = fleet.project / "tako.toml"
    text = toml.read_text()
    toml.write_text(
        text.replace(f'route = "{ROUTE}"', f'routes = ["{ROUTE}", "{EXTRA_ROUTE}"]').replace(
            "instances = 1", "instances = 2"
        )
    )
    fourth = commit_all(fleet.project, "Fourth release: a second route, two instances")
    try:
        assert "2/2 server(s) succeeded" in fleet.tako("deploy", "--yes")
        for host in fleet.hosts:
            assert greeting(host)[0].startswith(f"second! build {fourth}")
            assert body_and_status(curl(host.address, EXTRA_ROUTE))[1] == 200
        assert app_settings(fleet) == {name: ([ROUTE, EXTRA_ROUTE], 2) for name in NAMES}

        out = fleet.tako("rollback", "--yes")
        for host in fleet.hosts:
            assert greeting(host)[0].startswith(f"second! build {live}"), out
            # No certificate is served for a host no app routes: asked over HTTP, the proxy says so.
            body, status = body_and_status(curl(host.address, EXTRA_ROUTE, https=False))
            assert (status, body.strip()) == (404, "Not Found: no app is deployed at this address"), out
        assert app_settings(fleet) == {name: ([ROUTE], 1) for name in NAMES}, out
    finally:
        toml.write_text(text)
        commit_all(fleet.project, "back to one route")


def app_settings(fleet: Fleet) -> dict[str, tuple[list[str], int]]:
    """Per server: the routes and the instance count tako-server runs the app with."""
    servers = json.loads(fleet.tako("status", "--json"))
    found = {}
    for server in servers:
        for app in server["apps"]:
            if app["app"] == APP:
                found[server["server"]] = (sorted(app["routes"]), app["min_instances"])
    return found
