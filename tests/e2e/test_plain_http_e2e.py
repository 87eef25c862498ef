"""End to end on one testbed host: an app deployed with `[tako] https = false` is served by the installed
tako-server on plain HTTP (port 80) instead of being redirected to HTTPS, and no certificate is tracked for
its host; deployed again without the key, plain HTTP redirects once more."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import commit_all, make_project
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "plain1"
ROUTE = "plain.tako.test"


def plain_get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One plain-HTTP request from this machine to the host's port 80: status, headers (lower-case), body."""
    argv = ["curl", "-sS", "--max-time", "10", "--resolve", f"{ROUTE}:80:{address}", "-D", "-"]
    out = subprocess.run([*argv, f"http://{ROUTE}{path}"], capture_output=True, timeout=15, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


def tracked_certificates(address: str) -> dict[str, object]:
    _, _, body = plain_get(address, "/_tako/status")
    certificates: dict[str, object] = json.loads(body)["certificates"]
    return certificates


def test_an_app_with_https_off_is_served_on_plain_http(cli: TakoCLI, host: Host, tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        name="plain",
        route=ROUTE,
        servers={host.name: "production"},
        extra_toml='\n[vars]\nGREETING = "served plainly"\n',
    )
    toml = project / "tako.toml"
    toml.write_text(toml.read_text().replace("[tako]\n", "[tako]\nhttps = false\n", 1))
    commit_all(project, "plain HTTP")
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
    status, headers, body = plain_get(host.address, "/")
    assert status == 200 and body.startswith(b"served plainly! build "), (status, body)
    assert headers.get("x-request-id")
    assert ROUTE not in tracked_certificates(host.address)

    toml.write_text(toml.read_text().replace("https = false\n", "", 1))
    commit_all(project, "HTTPS again")
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
    status, headers, _ = plain_get(host.address, "/")
    assert (status, headers.get("location")) == (301, f"https://{ROUTE}/")
    assert ROUTE in tracked_certificates(host.address)
