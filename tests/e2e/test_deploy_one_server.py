"""End to end on one testbed host: servers add, deploy, the remote layout, redeploy, lock and cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, git, make_project
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

APP_DIR = "/opt/tako/apps/hello"


@pytest.fixture(scope="module")
def host(testbed: Testbed) -> Host:
    return testbed.up("solo")[0]


def ssh_env(host: Host) -> dict[str, str]:
    return user_ssh_env(host)


def _head(project: Path) -> str:
    return git(project, "rev-parse", "--short=7", "HEAD")


def remote(host: Host, command: str) -> str:
    result = host.exec(command, user="tako")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_add_deploy_redeploy_and_layout(host: Host, tako: TakoCLI, tmp_path: Path) -> None:
    added = tako.ok("servers", "add", host.address, "--name", "solo", env=ssh_env(host))
    assert "solo" in added.stdout
    assert host.address in (tako.home / "known_hosts").read_text()
    # Re-adding the same entry is a no-op success.
    tako.ok("servers", "add", host.address, "--name", "solo", env=ssh_env(host))

    project = make_project(tmp_path, servers={"solo": "production"})
    version = _head(project)
    deployed = tako.ok("deploy", "--yes", cwd=project, env=ssh_env(host))
    assert "1/1 server(s) succeeded" in deployed.stdout, deployed.stdout
    assert "https://hello.tako.test" in deployed.stdout

    body, status = body_and_status(curl(host.address, "hello.tako.test"))
    assert status == 200 and f"build {version}" in body

    # Plain HTTP with the route's Host header is redirected to HTTPS, path and query kept.
    redirect = curl(host.address, "hello.tako.test", "/x?y=1", https=False, extra=("-o", "/dev/null"))
    _, code = body_and_status(redirect)
    assert code == 301

    # The remote layout is the one docs/deployment.md describes.
    assert remote(host, f"readlink {APP_DIR}/current") == f"releases/{version}"
    assert remote(host, f"stat -c %a {APP_DIR}/releases/{version}/.env") == "600"
    env_text = remote(host, f"cat {APP_DIR}/releases/{version}/.env")
    assert f'TAKO_BUILD="{version}"' in env_text and 'ENV="production"' in env_text
    assert 'GREETING="Hello from Tako"' not in env_text  # the test project defines no [vars]
    assert remote(host, f"readlink {APP_DIR}/releases/{version}/logs") == f"{APP_DIR}/shared/logs"
    assert remote(host, f"test -f {APP_DIR}/releases/{version}/app.json && echo yes") == "yes"
    assert remote(host, f"test -e {APP_DIR}/.deploy_lock || echo free") == "free"

    # A second deploy of changed code serves the new version.
    app = project / "app.py"
    app.write_text(app.read_text().replace("Hello from Tako", "Hello again"))
    second = commit_all(project, "v2")
    tako.ok("deploy", "--yes", cwd=project, env=ssh_env(host))
    body, status = body_and_status(curl(host.address, "hello.tako.test"))
    assert status == 200 and f"build {second}" in body and "Hello again" in body
    assert remote(host, f"readlink {APP_DIR}/current") == f"releases/{second}"
    releases = remote(host, f"ls {APP_DIR}/releases").split()
    assert sorted(releases) == sorted([version, second])

    # tako status shows the app on the server.
    status_out = tako.ok("status", env=ssh_env(host)).stdout
    assert "hello" in status_out and second in status_out


def test_held_lock_fails_cleanly_and_is_left_alone(host: Host, tako: TakoCLI, tmp_path: Path) -> None:
    tako.ok("servers", "add", host.address, "--name", "solo", env=ssh_env(host))
    project = make_project(tmp_path, servers={"solo": "production"})
    tako.ok("deploy", "--yes", cwd=project, env=ssh_env(host))
    before = remote(host, f"readlink {APP_DIR}/current")
    lock = f"{APP_DIR}/.deploy_lock"
    remote(host, f"mkdir -p {lock} && echo 'alice@laptop since noon' > {lock}/holder")
    try:
        (project / "new.txt").write_text("new\n")
        commit_all(project, "would be v3")
        result = tako.run("deploy", "--yes", cwd=project, env=ssh_env(host))
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert f"{APP_DIR}/.deploy_lock" in output and "alice@laptop since noon" in output
        # Nothing changed there, and the lock is as it was.
        assert remote(host, f"cat {APP_DIR}/.deploy_lock/holder") == "alice@laptop since noon"
        assert remote(host, f"readlink {APP_DIR}/current") == before
        assert _head(project) not in remote(host, f"ls -a {APP_DIR}/releases")
    finally:
        remote(host, f"rm -rf {APP_DIR}/.deploy_lock")


def test_failed_release_leaves_no_lock_nor_release_dir(host: Host, tako: TakoCLI, tmp_path: Path) -> None:
    tako.ok("servers", "add", host.address, "--name", "solo", env=ssh_env(host))
    project = make_project(tmp_path, servers={"solo": "production"})
    tako.ok("deploy", "--yes", cwd=project, env=ssh_env(host))
    good = _head(project)

    toml = project / "tako.toml"
    (project / "broken.py").write_text("import sys\nprint('boom at boot', flush=True)\nsys.exit(3)\n")
    toml.write_text(toml.read_text().replace("python3 app.py", "python3 broken.py"))
    broken = commit_all(project, "broken")
    result = tako.run("deploy", "--yes", cwd=project, env=ssh_env(host))
    assert result.returncode == 1, result.stdout
    assert "boom at boot" in result.stdout + result.stderr

    assert remote(host, f"test -e {APP_DIR}/.deploy_lock || echo free") == "free"
    assert broken not in remote(host, f"ls -a {APP_DIR}/releases")
    assert remote(host, f"readlink {APP_DIR}/current") == f"releases/{good}"
    body, status = body_and_status(curl(host.address, "hello.tako.test"))
    assert status == 200 and f"build {good}" in body
