"""End to end on three testbed hosts: parallel deploys with partial success under real faults (partition
mid-upload, held lock, low disk, stopped tako-server, route conflict), and clean re-runs afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_hosts, user_ssh_env
from tests.support.fleet import DeployProcess, everywhere, leftovers, remote, serves
from tests.support.projects import commit_all, git, make_project, wait_for
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

NAMES = ("ms-m1", "ms-m2", "ms-m3")
ROUTE = "hello.tako.test"


@pytest.fixture(scope="module")
def hosts(testbed: Testbed) -> list[Host]:
    return testbed.up(*NAMES)


@pytest.fixture(scope="module")
def cli(hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> TakoCLI:
    """One TAKO_HOME for the module, with the three hosts in its inventory."""
    return cli_with_hosts(hosts, tmp_path_factory)


def ssh_env(host: Host) -> dict[str, str]:
    return user_ssh_env(host)


def head(project: Path) -> str:
    return git(project, "rev-parse", "--short=7", "HEAD")


def test_deploy_to_three_hosts_status_and_logs(hosts: list[Host], cli: TakoCLI, tmp_path: Path) -> None:
    project = make_project(tmp_path, servers=everywhere(hosts))
    version = head(project)
    out = cli.ok("deploy", "--yes", cwd=project, env=ssh_env(hosts[0])).stdout
    assert "3/3 server(s) succeeded" in out, out
    assert f"https://{ROUTE}" in out
    for host in hosts:
        assert f"✓ {host.name}: deployed hello {version}" in out
        assert serves(host, ROUTE, version), host.name
    # Plain progress lines off a terminal: no control characters at all.
    assert "\x1b" not in out and "\r" not in out

    status = cli.ok("status", env=ssh_env(hosts[0])).stdout
    for host in hosts:
        assert f"✓ {host.name} ({host.address}): tako-server" in status, status
    assert status.count(version) == 3, status

    # Each host's app wrote a line for the request above; logs shows them all, prefixed per server.
    def all_logged() -> bool:
        logs = cli.run("logs", "--no-follow", "-n", "50", cwd=project, env=ssh_env(hosts[0]))
        lines = logs.stdout.splitlines()
        return logs.returncode == 0 and all(
            any(line.startswith(f"[{h.name}] ") and "GET / " in line for line in lines) for h in hosts
        )

    wait_for(all_logged, timeout=15, what="request lines from all three hosts in `tako logs`")


@contextlib.contextmanager
def slow_link(host: Host) -> Iterator[None]:
    """The host's machine->host traffic shaped to 16 Mbit/s, so an upload lasts seconds."""
    shape = ["tc", "qdisc", "replace", "dev", host.veth, "root", "tbf", "rate", "16mbit"]
    subprocess.run([*shape, "burst", "32kbit", "latency", "400ms"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", host.veth, "root"], check=False, capture_output=True)


def test_partition_mid_upload_and_held_lock(
    hosts: list[Host], cli: TakoCLI, tmp_path: Path, testbed: Testbed
) -> None:
    ok_host, cut_host, locked_host = hosts
    project = make_project(tmp_path, name="bulky", route="bulky.tako.test", servers=everywhere(hosts))
    # Random bytes do not compress: an 8 MiB archive takes ~4 s over the shaped link.
    (project / "blob.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    version = commit_all(project, "with a blob")
    lock = "/opt/tako/apps/bulky/.deploy_lock"
    remote(locked_host, f"mkdir -p {lock} && echo 'alice@laptop pid 4242 since noon' > {lock}/holder")
    try:
        with slow_link(cut_host):
            deploy = DeployProcess(cli.executable, project, cli.env(ssh_env(ok_host)))
            try:
                deploy.wait_for_line(f"[{cut_host.name}] uploading", timeout=60)
                testbed.cut(cut_host.name)
                # The CLI notices the silent peer by SSH keepalives (3 x 5 s), then cleans up.
                code, out = deploy.finish(timeout=90)
            finally:
                deploy.kill()
                testbed.heal(cut_host.name)
    finally:
        remote(locked_host, f"rm -rf {lock}")

    assert code == 1, out
    assert f"✓ {ok_host.name}: deployed bulky {version}" in out, out
    assert f"✗ {cut_host.name}: failed at upload: upload interrupted after" in out, out
    assert f"✗ {locked_host.name}: failed at lock:" in out, out
    assert lock in out and "alice@laptop pid 4242 since noon" in out, out
    assert "1/3 server(s) succeeded" in out
    assert serves(ok_host, "bulky.tako.test", version)

    # Healed and unlocked: a re-run deploys everywhere. The cut host still has the lock of the
    # interrupted deploy (its cleanup could not reach it); the re-run recognises it as stale.
    rerun = cli.run("deploy", "--yes", cwd=project, env=ssh_env(ok_host), timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "3/3 server(s) succeeded" in rerun.stdout
    assert f"[{cut_host.name}] removing a stale lock of an interrupted deploy" in rerun.stdout
    for host in hosts:
        assert serves(host, "bulky.tako.test", version), host.name
        assert leftovers(host, "bulky") == [], host.name
        assert remote(host, "readlink /opt/tako/apps/bulky/current") == f"releases/{version}"
    cli.ok("delete", "--yes", cwd=project, env=ssh_env(ok_host))


def test_low_disk_fails_at_preflight_and_leaves_nothing(
    hosts: list[Host], cli: TakoCLI, tmp_path: Path, testbed: Testbed
) -> None:
    (small,) = testbed.up("ms-small", disk_mb=32)
    cli.ok("servers", "add", small.address, "--name", small.name, env=ssh_env(small))
    project = make_project(
        tmp_path,
        name="tiny",
        route="tiny.tako.test",
        servers={small.name: "production", hosts[0].name: "production"},
    )
    result = cli.run("deploy", "--yes", cwd=project, env=ssh_env(small))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"✗ {small.name}: failed at disk: not enough disk space under /opt/tako:" in out, out
    assert "MiB required" in out and "available" in out, out
    assert f"✓ {hosts[0].name}: deployed tiny" in out
    # Nothing left there: no app dir at all (so no lock, no release, no upload).
    assert remote(small, "ls -A /opt/tako/apps") == ""
    cli.ok("delete", "--yes", "--app", "tiny", "--server", hosts[0].name, env=ssh_env(small))


def test_a_release_larger_unpacked_than_the_free_disk_fails_at_preflight(
    cli: TakoCLI, tmp_path: Path, testbed: Testbed
) -> None:
    # 130 MB of zeros packs to a few hundred KiB: a check of the archive's size alone passed here and the
    # deploy failed at extract with tar's "Wrote only 7168 of 10240 bytes".
    (mid,) = testbed.up("ms-mid", disk_mb=100)
    cli.ok("servers", "add", mid.address, "--name", mid.name, env=ssh_env(mid))
    project = make_project(tmp_path, name="zeros", route="zeros.tako.test", servers={mid.name: "production"})
    with (project / "zeros.bin").open("wb") as handle:
        handle.truncate(130 * 1024 * 1024)
    commit_all(project, "130 MB of zeros")
    result = cli.run("deploy", "--yes", cwd=project, env=ssh_env(mid), timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"✗ {mid.name}: failed at disk: not enough disk space under /opt/tako:" in out, out
    assert "MiB unpacked" in out, out
    assert remote(mid, "ls -A /opt/tako/apps") == ""


def test_stopped_tako_server_fails_only_that_host(hosts: list[Host], cli: TakoCLI, tmp_path: Path) -> None:
    project = make_project(tmp_path, servers=everywhere(hosts))
    first = head(project)
    cli.ok("deploy", "--yes", cwd=project, env=ssh_env(hosts[0]))
    stopped = hosts[1]
    app = project / "app.py"
    app.write_text(app.read_text().replace("Hello from Tako", "Hello while one is down"))
    second = commit_all(project, "v2")
    stopped.exec("tako-server-service stop", check=True)
    try:
        result = cli.run("deploy", "--yes", cwd=project, env=ssh_env(hosts[0]))
    finally:
        stopped.exec("tako-server-service start", check=True)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"✗ {stopped.name}: failed at server: tako-server is installed but not running" in out, out
    assert "tako-server-service start" in out
    assert "2/3 server(s) succeeded" in out
    for host in (hosts[0], hosts[2]):
        assert serves(host, ROUTE, second), host.name
    # The restarted server restores its saved state: the previous release serves there, nothing is left.
    wait_for(
        lambda: serves(stopped, ROUTE, first), timeout=30, what="the old release back on the restarted host"
    )
    assert leftovers(stopped, "hello") == []
    assert second not in remote(stopped, "ls -a /opt/tako/apps/hello/releases")


def test_route_conflict_refused_everywhere(hosts: list[Host], cli: TakoCLI, tmp_path: Path) -> None:
    first = make_project(tmp_path / "a", servers=everywhere(hosts))
    cli.ok("deploy", "--yes", cwd=first, env=ssh_env(hosts[0]))
    rival = make_project(tmp_path / "b", name="rival", route=ROUTE, servers=everywhere(hosts))
    result = cli.run("deploy", "--yes", cwd=rival, env=ssh_env(hosts[0]))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    for host in hosts:
        assert (
            f"✗ {host.name}: failed at routes: route '{ROUTE}' of app 'rival' conflicts with route "
            f"'{ROUTE}' of app 'hello' on this server"
        ) in out, out
        # Refused before anything was written: no dir for the rival app, no lock left on hello.
        assert remote(host, "ls -A /opt/tako/apps").split() == ["hello"], host.name
        assert leftovers(host, "hello") == [], host.name
    assert "0/3 server(s) succeeded" in out
    for host in hosts:
        assert serves(host, ROUTE, head(first)), host.name
