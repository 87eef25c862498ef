"""End to end access logs on two testbed hosts: requests with known ids reach each server's access.log, and
`tako logs --access` shows them from both servers (text with the ids, `--json` with the server's name,
`--status` filtering by class)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_hosts, user_ssh_env
from tests.support.projects import body_and_status, curl, make_project, wait_for
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

NAMES = ("al-a", "al-b")
ROUTE = "access.tako.test"


@dataclass
class Deployed:
    hosts: list[Host]
    cli: TakoCLI
    project: Path

    @property
    def env(self) -> dict[str, str]:
        return user_ssh_env(self.hosts[0])


@pytest.fixture(scope="module")
def deployed(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    hosts = testbed.up(*NAMES)
    cli = cli_with_hosts(hosts, tmp_path_factory)
    env = user_ssh_env(hosts[0])
    project = make_project(
        tmp_path_factory.mktemp("al-project"),
        name="accesslog",
        route=ROUTE,
        servers={h.name: "production" for h in hosts},
    )
    cli.ok("deploy", "--yes", cwd=project, env=env)
    yield Deployed(hosts, cli, project)


def request_with_id(host: Host, request_id: str, path: str = "/") -> int:
    _, status = body_and_status(curl(host.address, ROUTE, path, extra=("-H", f"X-Request-Id: {request_id}")))
    return status


def test_logs_access_shows_each_servers_requests_with_their_ids(deployed: Deployed) -> None:
    d = deployed
    ids = {host.name: f"e2e-{host.name}-1" for host in d.hosts}
    for host in d.hosts:
        assert request_with_id(host, ids[host.name]) == 200

    def shown(*extra: str) -> str:
        proc = d.cli.run("logs", "--access", "--no-follow", "-n", "50", *extra, cwd=d.project, env=d.env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    latest = [""]

    def with_both() -> bool:
        latest[0] = shown()
        return all(f"id={i}" in latest[0] for i in ids.values())

    wait_for(with_both, timeout=20, what="both requests in `tako logs --access`")
    text = latest[0]
    for name, request_id in ids.items():
        (line,) = [ln for ln in text.splitlines() if f"id={request_id}" in ln]
        assert line.startswith(f"[{name}] ") and " 200 GET access.tako.test/ " in line, line

    entries = [json.loads(line) for line in shown("--json").splitlines()]
    mine = {e["request_id"]: e for e in entries if e["request_id"] in ids.values()}
    assert {e["server"] for e in mine.values()} == set(NAMES)
    for name, request_id in ids.items():
        entry = mine[request_id]
        assert entry["server"] == name and entry["app"] == "accesslog" and entry["status"] == 200
        assert entry["tls"] is True and entry["host"] == ROUTE and entry["path"] == "/"

    assert not any(f"id={i}" in shown("--status", "5xx") for i in ids.values())
    assert all(f"id={i}" in shown("--status", "2xx") for i in ids.values())


def test_status_filter_without_access_is_refused(deployed: Deployed) -> None:
    proc = deployed.cli.run("logs", "--status", "5xx", "--no-follow", cwd=deployed.project, env=deployed.env)
    assert proc.returncode != 0 and "--access" in (proc.stderr + proc.stdout)
