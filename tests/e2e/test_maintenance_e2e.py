"""End to end on one testbed host: `tako maintenance on|off` under a request loop. While on, the app's
route answers 503 with Retry-After and the message; `/_tako/status` answers 200 throughout; a client in
`[tako] maintenance_allow` (the host itself, on 127.0.0.1) still reaches the app; after off, 200 again."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import commit_all, make_project, wait_for
from tests.support.testbed import Host
from tests.support.threads import looping

pytestmark = pytest.mark.e2e

SERVER = "mnt1"
ROUTE = "maint.tako.test"
MESSAGE = "Back soon <we promise>"


def request(address: str, path: str = "/") -> tuple[int, str, str]:
    """One HTTPS request from this machine: (status, Retry-After header, body)."""
    argv = ["curl", "-sS", "-k", "--max-time", "10", "--resolve", f"{ROUTE}:443:{address}"]
    argv += ["-w", "\n%{http_code} %header{retry-after}", f"https://{ROUTE}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False).stdout
    body, _, tail = out.rpartition("\n")
    code, _, retry_after = tail.partition(" ")
    return int(code or 0), retry_after.strip(), body


@dataclass
class Loop:
    """Requests one after the other, each recorded with the time it started."""

    address: str
    path: str
    stop: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[float, int, str, str]] = field(default_factory=list)

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.seen) < 20_000:
            started = time.monotonic()
            self.seen.append((started, *request(self.address, self.path)))

    def after(self, moment: float) -> list[tuple[float, int, str, str]]:
        return [s for s in self.seen if s[0] > moment]


@pytest.fixture(scope="module")
def project(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    project = make_project(
        tmp_path_factory.mktemp("maint"), name="maint", route=ROUTE, servers={host.name: "production"}
    )
    toml = project / "tako.toml"
    toml.write_text(toml.read_text().replace("[tako]\n", '[tako]\nmaintenance_allow = ["127.0.0.1"]\n', 1))
    commit_all(project, "let the host itself through maintenance")
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
    yield project


def local_status(host: Host) -> int:
    """One request from the host itself (127.0.0.1: in maintenance_allow)."""
    argv = ["curl", "-sS", "-k", "--max-time", "10", "--resolve", f"{ROUTE}:443:127.0.0.1"]
    result = host.exec([*argv, "-o", "/dev/null", "-w", "%{http_code}", f"https://{ROUTE}/"])
    return int(result.stdout.strip() or 0)


def test_maintenance_on_and_off_under_a_request_loop(cli: TakoCLI, host: Host, project: Path) -> None:
    env = user_ssh_env(host)
    app, status = Loop(host.address, "/"), Loop(host.address, "/_tako/status")
    with looping(app.run, app.stop, "app-loop"), looping(status.run, status.stop, "status-loop"):
        wait_for(lambda: any(s[1] == 200 for s in app.seen), timeout=30, what="the app answering")

        out = cli.ok("maintenance", "on", "--message", MESSAGE, cwd=project, env=env).stdout
        assert f"✓ {host.name}: maint maintenance on" in out
        on = time.monotonic()
        wait_for(lambda: len(app.after(on)) >= 5, timeout=60, what="requests during maintenance")
        during = app.after(on)
        assert {s[1] for s in during} == {503}, during[:5]
        assert all(s[2].isdigit() for s in during)  # Retry-After on every 503
        assert "Back soon &lt;we promise&gt;" in during[0][3]
        assert local_status(host) == 200  # the allowed client passes
        shown = cli.ok("status", cwd=project, env=env).stdout
        assert "maint: maintenance on" in shown

        # A deploy during maintenance keeps it on and brings its own page; a rollback keeps it on and
        # keeps the allow list.
        (project / "maintenance.html").write_text("<h1>Closed for the upgrade</h1>\n")
        commit_all(project, "a maintenance page")
        cli.ok("deploy", "--yes", cwd=project, env=env)
        deployed = time.monotonic()
        wait_for(lambda: len(app.after(deployed)) >= 3, timeout=60, what="requests after the deploy")
        assert {(s[1], s[3].strip()) for s in app.after(deployed)} == {
            (503, "<h1>Closed for the upgrade</h1>")
        }
        cli.ok("rollback", "--yes", cwd=project, env=env)
        rolled = time.monotonic()
        wait_for(lambda: len(app.after(rolled)) >= 3, timeout=60, what="requests after the rollback")
        assert {s[1] for s in app.after(rolled)} == {503}
        assert "Back soon" in app.after(rolled)[-1][3]  # the old release has no page: the default one
        assert local_status(host) == 200

        cli.ok("maintenance", "off", cwd=project, env=env)
        off = time.monotonic()
        wait_for(lambda: len(app.after(off)) >= 5, timeout=60, what="requests after maintenance")
        assert {s[1] for s in app.after(off)} == {200}
        assert "maintenance on" not in cli.ok("status", cwd=project, env=env).stdout
    # tako-server's own status endpoint answered 200 throughout, maintenance or not.
    assert status.seen and {s[1] for s in status.seen} == {200}
    # Requests that started between the command and its reply may have gone either way; none failed.
    assert {s[1] for s in app.seen} <= {200, 503}
