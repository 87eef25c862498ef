"""End to end on three testbed hosts: `[deploy] strategy = "rolling"` switches a batch at a time and stops at
the first failed batch; `atomic = true` switches no server unless all prepared, and switches back the
servers that switched when another fails to."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_hosts, user_ssh_env
from tests.support.fleet import everywhere, leftovers, live_link, releases, remote, serves
from tests.support.projects import body_and_status, commit_all, curl, make_project
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

APP = "fleet"
ROUTE = "fleet.tako.test"
# An instance refuses to start on a server that has this file (a release unhealthy on that server only), or
# this file followed by `-<version>` (that one release unhealthy there).
NO_START = f"/opt/tako/apps/{APP}/shared/no-start"
START = f"test ! -e {NO_START} && test ! -e {NO_START}-$TAKO_BUILD && exec python3 app.py"


@pytest.fixture(scope="module")
def hosts(testbed: Testbed) -> list[Host]:
    # The third has a disk of its own, which a test fills.
    return [*testbed.up("fs-1", "fs-2"), *testbed.up("fs-3", disk_mb=200)]


@pytest.fixture(scope="module")
def cli(hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> TakoCLI:
    return cli_with_hosts(hosts, tmp_path_factory)


@pytest.fixture(scope="module")
def project(cli: TakoCLI, hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_project(
        tmp_path_factory.mktemp(APP), name=APP, route=ROUTE, servers=everywhere(hosts), start=START
    )
    yield root
    cli.run("delete", "--yes", cwd=root, env=user_ssh_env(hosts[0]))


def deploy(cli: TakoCLI, project: Path, host: Host, settings: str) -> tuple[int, str]:
    """Commit a change with `settings` as the `[deploy]` table, then deploy it."""
    toml = project / "tako.toml"
    text = toml.read_text().split("[deploy]\n", 1)[0]
    toml.write_text(f"{text}[deploy]\n{settings}\n" if settings else text)
    (project / "CHANGELOG").write_text(uuid.uuid4().hex)  # a new version each time
    commit_all(project, f"deploy with {settings or 'defaults'}")
    result = cli.run("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=240)
    return result.returncode, result.stdout + result.stderr


def baseline(cli: TakoCLI, project: Path, hosts: list[Host]) -> str:
    """Every server on one version (a parallel deploy); that version."""
    code, out = deploy(cli, project, hosts[0], "")
    assert code == 0, out
    version = live_link(hosts[0], APP)
    assert all(live_link(h, APP) == version for h in hosts), out
    return version


@contextlib.contextmanager
def unhealthy_on(host: Host, version: str = "") -> Iterator[None]:
    """No instance (of `version` only, if given) starts on `host` within the block."""
    marker = f"{NO_START}-{version}" if version else NO_START
    remote(host, f"touch {marker}")
    try:
        yield
    finally:
        remote(host, f"rm -f {marker}")


@contextlib.contextmanager
def disk_full(host: Host) -> Iterator[None]:
    """All but a few MiB of the host's /opt/tako taken by one file."""
    free = int(remote(host, "df -Pk /opt/tako | tail -n 1").split()[3])
    filler = "/opt/tako/filler"
    host.exec(f"fallocate -l {max(free - 4096, 1)}K {filler}", check=True)
    try:
        yield
    finally:
        host.exec(f"rm -f {filler}", check=True)


def assert_all_on(hosts: list[Host], version: str) -> None:
    for host in hosts:
        assert live_link(host, APP) == version, host.name
        assert serves(host, ROUTE, version), host.name
        assert leftovers(host, APP) == [], host.name


def test_rolling_stops_at_the_first_failed_batch(cli: TakoCLI, hosts: list[Host], project: Path) -> None:
    old = baseline(cli, project, hosts)
    first, failing, untouched = hosts
    with unhealthy_on(failing):
        code, out = deploy(cli, project, first, 'strategy = "rolling"\nbatch = 1')
    new = live_link(first, APP)
    assert code == 1, out
    assert new != old and serves(first, ROUTE, new), out
    assert f"✓ {first.name}: deployed {APP} {new}" in out, out
    assert f"✗ {failing.name}: failed at deploy: tako-server refused the release" in out, out
    assert f"✗ {untouched.name}: failed at deploy: not switched: batch 2 of 3 failed on {failing.name}" in out
    assert_all_on([failing, untouched], old)
    assert new not in releases(untouched, APP)


def test_atomic_switches_nothing_when_a_server_cannot_prepare(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    old = baseline(cli, project, hosts)
    full = hosts[2]
    with disk_full(full):
        code, out = deploy(cli, project, hosts[0], "atomic = true")
    assert code == 1, out
    assert f"✗ {full.name}: failed at disk: not enough disk space" in out, out
    for host in hosts[:2]:
        assert (
            f"✗ {host.name}: failed at deploy: not switched: an atomic deploy switches only if every server "
            f"prepared ({full.name} failed at disk)"
        ) in out, out
    assert_all_on(hosts, old)


def test_atomic_switches_nothing_when_a_server_is_cut_off(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    old = baseline(cli, project, hosts)
    cut = hosts[1]
    cut.cut()
    try:
        code, out = deploy(cli, project, hosts[0], "atomic = true")
    finally:
        cut.heal()
    assert code == 1, out
    assert f"✗ {cut.name}: failed at connect" in out, out
    for host in (hosts[0], hosts[2]):
        assert f"✗ {host.name}: failed at deploy: not switched" in out, out
    assert_all_on(hosts, old)


def test_atomic_switches_back_when_a_server_fails_to_switch(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    old = baseline(cli, project, hosts)
    failing = hosts[1]
    with unhealthy_on(failing):
        code, out = deploy(cli, project, hosts[0], "atomic = true")
    assert code == 1, out
    assert f"✗ {failing.name}: failed at deploy: tako-server refused the release" in out, out
    for host in (hosts[0], hosts[2]):
        undone = f"{failing.name} failed to switch, so this atomic deploy was undone: switched back to {old}"
        assert f"✗ {host.name}: failed at deploy: {undone}" in out, out
    assert_all_on(hosts, old)
    # Healthy everywhere, the same atomic deploy goes through.
    code, out = deploy(cli, project, hosts[0], "atomic = true")
    assert code == 0, out
    assert_all_on(hosts, live_link(hosts[0], APP))
    assert live_link(hosts[0], APP) != old


def greeting_on(host: Host) -> str:
    body, status = body_and_status(curl(host.address, ROUTE))
    assert status == 200, body
    return body.split("!", 1)[0]


def test_atomic_switches_back_a_redeploy_of_the_same_version(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    # A redeploy of the live version with a new secret: the release directory of that version then holds
    # the new `.env`, so switching back must bring back the files it replaced, not rerun the new ones.
    env = user_ssh_env(hosts[0])
    secret = ("secrets", "set", "--env", "production", "GREETING")
    cli.ok(*secret, cwd=project, input="before\n", env=env)
    code, out = deploy(cli, project, hosts[0], "atomic = true")
    assert code == 0, out
    version = live_link(hosts[0], APP)
    cli.ok(*secret, cwd=project, input="after\n", env=env)
    failing = hosts[1]
    try:
        with unhealthy_on(failing):
            result = cli.run("deploy", "--yes", cwd=project, env=env, timeout=240)
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert f"Deploying {APP} {version} " in out, out
        for host in (hosts[0], hosts[2]):
            assert f"undone: switched back to {version}" in out, out
            assert greeting_on(host) == "before", host.name
        assert_all_on(hosts, version)
        for host in hosts:
            assert greeting_on(host) == "before", host.name
    finally:
        cli.ok("secrets", "rm", "--env", "production", "GREETING", "--yes", cwd=project, env=env)


def test_atomic_says_where_each_server_is_left_when_switching_back_fails(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    old = baseline(cli, project, hosts)
    stuck, failing, back = hosts
    # The new release cannot start on `failing`; the old one cannot start again on `stuck`.
    with unhealthy_on(failing), unhealthy_on(stuck, old):
        code, out = deploy(cli, project, hosts[0], "atomic = true")
    new = live_link(stuck, APP)
    assert code == 1, out
    assert new != old, out
    undone = f"{failing.name} failed to switch, so this atomic deploy was undone: switched back to {old}"
    assert f"✗ {back.name}: failed at deploy: {undone}" in out, out
    assert (
        f"✗ {stuck.name}: failed at deploy: {failing.name} failed to switch, and switching this server back "
        f"to {old} failed"
    ) in out, out
    assert f"this server is left on {new}" in out, out
    assert serves(stuck, ROUTE, new) and leftovers(stuck, APP) == [], out
    assert new in releases(stuck, APP), out
    assert_all_on([failing, back], old)
    # Fixed, the next deploy brings every server to one version.
    code, out = deploy(cli, project, hosts[0], "atomic = true")
    assert code == 0, out
    assert_all_on(hosts, live_link(hosts[0], APP))


def test_an_atomic_first_deploy_that_fails_to_switch_removes_the_app_again(
    cli: TakoCLI, hosts: list[Host], tmp_path: Path
) -> None:
    # Nothing ran before on any server: switching back means tako-server forgets the app again.
    marker = "/opt/tako/no-start-fleetnew"
    project = make_project(
        tmp_path,
        name="fleetnew",
        route="fleetnew.tako.test",
        servers=everywhere(hosts),
        start=f"test ! -e {marker} && exec python3 app.py",
        extra_toml="\n[deploy]\natomic = true\n",
    )
    failing = hosts[1]
    failing.exec(f"touch {marker}", check=True)
    try:
        result = cli.run("deploy", "--yes", cwd=project, env=user_ssh_env(hosts[0]), timeout=240)
    finally:
        failing.exec(f"rm -f {marker}", check=True)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    for host in (hosts[0], hosts[2]):
        removed = f"{failing.name} failed to switch, so this atomic deploy was undone: the app, new here, was"
        assert f"✗ {host.name}: failed at deploy: {removed} removed again" in out, out
    servers = json.loads(cli.ok("status", "--json", env=user_ssh_env(hosts[0])).stdout)
    assert [a["app"] for s in servers for a in s["apps"] if a["app"] == "fleetnew"] == [], servers
    for host in hosts:
        assert leftovers(host, "fleetnew") == [], host.name
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(hosts[0]), timeout=240)
    cli.ok("delete", "--yes", cwd=project, env=user_ssh_env(hosts[0]))
