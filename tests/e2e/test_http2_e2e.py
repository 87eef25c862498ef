"""End to end: tako-server installed from the wheel on a testbed host (its libnghttp2 binding included)
answers a deployed app's HTTPS requests over HTTP/2 to clients that offer it and over HTTP/1.1 to the
others."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import git, make_project
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

HOST = "hello.tako.test"


@pytest.fixture(scope="module")
def host(testbed: Testbed) -> Host:
    return testbed.up("h2host")[0]


def _curl(address: str, flag: str) -> tuple[str, str, str]:
    """Body, status and HTTP version of a real curl request with `flag` (--http2 or --http1.1)."""
    argv = ["curl", "-sS", "-k", "--max-time", "10", "--resolve", f"{HOST}:443:{address}", flag]
    argv += ["-w", "\n%{http_code} %{http_version}", f"https://{HOST}/"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    body, _, tail = result.stdout.rpartition("\n")
    status, _, version = tail.partition(" ")
    return body, status, version


def test_installed_server_speaks_http2_and_http11(host: Host, tako: TakoCLI, tmp_path: Path) -> None:
    env = user_ssh_env(host)
    tako.ok("servers", "add", host.address, "--name", "h2host", env=env)
    project = make_project(tmp_path, servers={"h2host": "production"})
    version = git(project, "rev-parse", "--short=7", "HEAD")
    deployed = tako.ok("deploy", "--yes", cwd=project, env=env)
    assert "1/1 server(s) succeeded" in deployed.stdout, deployed.stdout
    for flag, expected in (("--http2", "2"), ("--http1.1", "1.1")):
        body, status, got = _curl(host.address, flag)
        assert (status, got) == ("200", expected), (flag, body)
        assert f"build {version}" in body
