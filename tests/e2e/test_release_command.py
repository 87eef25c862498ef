"""End to end on three testbed hosts: `[tako] release` runs exactly once per deploy, on the first server, in
the new release with its environment, before any server switches; a failing one switches nothing."""

from __future__ import annotations

import random
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_hosts, user_ssh_env
from tests.support.fleet import (
    DeployProcess,
    everywhere,
    leftovers,
    live_link,
    releases,
    serves,
    set_tako_key,
)
from tests.support.projects import commit_all, make_project, wait_for
from tests.support.terminal import read_until, terminal_session
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

NAMES = ("rc-1", "rc-2", "rc-3")
APP = "relcmd"
ROUTE = "relcmd.tako.test"


@pytest.fixture(scope="module")
def hosts(testbed: Testbed) -> list[Host]:
    return testbed.up(*NAMES)


@pytest.fixture(scope="module")
def cli(hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> TakoCLI:
    return cli_with_hosts(hosts, tmp_path_factory)


@pytest.fixture(scope="module")
def runs(hosts: list[Host]) -> Iterator[Path]:
    """The file the release command appends to: in /tmp, which every testbed host shares."""
    path = Path(f"/tmp/tako-e2e-release-{uuid.uuid4().hex}")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def project(cli: TakoCLI, hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_project(tmp_path_factory.mktemp(APP), name=APP, route=ROUTE, servers=everywhere(hosts))
    yield root
    cli.run("delete", "--yes", cwd=root, env=user_ssh_env(hosts[0]))


def deploy(cli: TakoCLI, project: Path, host: Host) -> tuple[int, str]:
    result = cli.run("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=240)
    return result.returncode, result.stdout + result.stderr


def live_version(cli: TakoCLI, project: Path, hosts: list[Host]) -> str:
    """The version the servers serve; deployed first when the app is not there yet (a test run alone)."""
    if hosts[0].exec(f"test -L /opt/tako/apps/{APP}/current", user="tako").returncode != 0:
        set_tako_key(project, "release = 'true'")
        commit_all(project, "deployed first")
        code, out = deploy(cli, project, hosts[0])
        assert code == 0, out
    return live_link(hosts[0], APP)


def recorded(runs: Path) -> list[list[str]]:
    return [line.split() for line in runs.read_text().splitlines()]


def test_the_release_command_runs_once_in_the_new_release_before_any_switch(
    cli: TakoCLI, hosts: list[Host], project: Path, runs: Path
) -> None:
    # What it records: the new version from its .env, the release dir it runs in, and what `current`
    # names on that server (still the previous release: nothing has switched yet).
    set_tako_key(
        project,
        "release = '"
        'echo "migrating $TAKO_BUILD in ${PWD##*/} for $ENV"; '
        f'echo "$TAKO_BUILD ${{PWD##*/}} $(readlink ../../current)" >> {runs}'
        "'",
    )
    version = commit_all(project, "with a release command")
    code, out = deploy(cli, project, hosts[1])
    assert code == 0, out
    assert f"[{hosts[0].name}] migrating {version} in {version} for production" in out, out
    assert recorded(runs) == [[version, version]]
    for host in hosts:
        assert serves(host, ROUTE, version), host.name
        assert leftovers(host, APP) == [], host.name
    # Once per deploy, however many servers: a second deploy adds one line.
    (project / "CHANGELOG").write_text("two\n")
    second = commit_all(project, "second")
    code, out = deploy(cli, project, hosts[1])
    assert code == 0, out
    assert recorded(runs) == [[version, version], [second, second, f"releases/{version}"]]


def test_on_a_terminal_the_release_command_output_is_printed_above_the_live_lines(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    live_version(cli, project, hosts)
    set_tako_key(project, "release = 'echo applying-0001; echo applying-0002 done'")
    version = commit_all(project, "a release command that prints on a terminal")
    argv = [cli.executable, "deploy", "--yes"]
    env = cli.env(user_ssh_env(hosts[0]))
    with terminal_session(argv, env=env, cwd=project, rows=40, columns=200) as (proc, master):
        seen = read_until(master, b"server(s) succeeded", timeout=240)
        assert proc.wait(timeout=60) == 0, seen
    screen = seen.decode(errors="replace")
    # Each line whole, with the server's name, once: printed above the live lines, never painted over.
    first = hosts[0].name
    for line in (f"[{first}] applying-0001", f"[{first}] applying-0002 done"):
        assert screen.count(line) == 1, screen
    assert screen.index(f"[{first}] applying-0001") < screen.index(f"[{first}] applying-0002 done")
    assert "\x1b[" in screen, "the live lines (a terminal's cursor moves) are drawn"
    assert f"{APP} {version} → production: 3/3 server(s) succeeded" in screen, screen


def test_a_failing_release_command_switches_no_server(
    cli: TakoCLI, hosts: list[Host], project: Path, runs: Path
) -> None:
    live_version(cli, project, hosts)
    before = {host.name: live_link(host, APP) for host in hosts}
    set_tako_key(project, "release = 'echo \"cannot migrate\" >&2; exit 3'")
    broken = commit_all(project, "a release command that fails")
    code, out = deploy(cli, project, hosts[0])
    assert code == 1, out
    assert f"[{hosts[0].name}] cannot migrate" in out, out
    assert f"✗ {hosts[0].name}: failed at release: the release command" in out, out
    assert "exited with status 3" in out, out
    for host in hosts[1:]:
        assert f"✗ {host.name}: failed at release: not switched: the release command failed on " in out
    for host in hosts:
        assert live_link(host, APP) == before[host.name], host.name
        assert serves(host, ROUTE, before[host.name]), host.name
        assert leftovers(host, APP) == [], host.name
        assert broken not in releases(host, APP), host.name


def test_a_release_command_over_its_timeout_is_stopped(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    before = live_version(cli, project, hosts)
    set_tako_key(project, "release = 'echo started; sleep 600'")
    set_tako_key(project, "release_timeout = 2")
    commit_all(project, "a release command that hangs")
    code, out = deploy(cli, project, hosts[0])
    assert code == 1, out
    assert f"[{hosts[0].name}] started" in out, out
    assert "did not finish within 2 s and was stopped" in out, out
    for host in hosts:
        assert live_link(host, APP) == before, host.name
        assert leftovers(host, APP) == [], host.name


def running(command_line: str) -> bool:
    """Whether a process with this command line runs anywhere on the machine (hosts share its pids)."""
    return subprocess.run(["pgrep", "-f", command_line], capture_output=True).returncode == 0


def test_ctrl_c_during_the_release_command_stops_it_and_switches_nothing(
    cli: TakoCLI, hosts: list[Host], project: Path
) -> None:
    before = live_version(cli, project, hosts)
    sleeper = f"sleep {random.randint(700000, 799999)}"  # a command line of this test only
    set_tako_key(project, f"release = 'echo started; {sleeper}'")
    set_tako_key(project, "release_timeout = 600")
    commit_all(project, "a release command that waits")
    deploy = DeployProcess(cli.executable, project, cli.env(user_ssh_env(hosts[0])))
    try:
        deploy.wait_for_line(f"[{hosts[0].name}] started", timeout=120)
        assert running(sleeper)
        deploy.proc.send_signal(signal.SIGINT)
        code, out = deploy.finish(timeout=60)
    finally:
        deploy.kill()
    assert code == 130, out
    assert f"✗ {hosts[0].name}: failed at release: interrupted before tako-server was asked" in out, out
    wait_for(lambda: not running(sleeper), timeout=30, what="the release command to stop on the server")
    for host in hosts:
        assert live_link(host, APP) == before, host.name
        assert leftovers(host, APP) == [], host.name
