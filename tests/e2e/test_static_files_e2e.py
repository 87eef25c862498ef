"""End to end on one testbed host: `[tako] static` in tako.toml reaches the installed tako-server through a
real `tako deploy`. The files under the mount are served by tako-server from the live release (the app never
sees them: a miss is tako-server's 404), with their cache headers and precompressed sibling; a deploy that
changes a file serves the new one, `tako rollback` the old one again; a mount whose directory is missing
stops the deploy on the developer's machine with an error naming tako.toml."""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import commit_all, make_project
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "stat1"
ROUTE = "static.tako.test"
CSS = b"body { margin: 0 }\n" * 30


def request(address: str, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request from this machine: status, response headers (lower-case names), body."""
    argv = ["curl", "-sS", "-k", "--path-as-is", "--max-time", "10", "--resolve", f"{ROUTE}:443:{address}"]
    argv += ["-D", "-"]  # the head, then the body
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(
        [*argv, f"https://{ROUTE}{path}"], capture_output=True, timeout=15, check=False
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    found = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]) if status_line else 0, found, body


@pytest.fixture(scope="module")
def project(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    project = make_project(
        tmp_path_factory.mktemp("static"), name="statics", route=ROUTE, servers={host.name: "production"}
    )
    toml = project / "tako.toml"
    toml.write_text(toml.read_text().replace("[tako]\n", '[tako]\nstatic = { "/assets" = "public" }\n', 1))
    public = project / "public"
    public.mkdir()
    (public / "site.css").write_bytes(CSS)
    (public / "site.css.gz").write_bytes(gzip.compress(CSS))
    (public / "app.3f2a9c1b.js").write_bytes(b"console.log('v1')\n")
    commit_all(project, "static files")
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
    yield project


def test_files_are_served_by_tako_server_from_the_live_release(host: Host, project: Path) -> None:
    status, headers, body = request(host.address, "/assets/site.css")
    assert (status, body) == (200, CSS)
    assert headers["content-type"] == "text/css; charset=utf-8" and headers["cache-control"] == "no-cache"
    status, headers, body = request(host.address, "/assets/site.css", "Accept-Encoding: gzip")
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == CSS
    etag = headers["etag"]
    assert (
        request(host.address, "/assets/site.css", "Accept-Encoding: gzip", f"If-None-Match: {etag}")[0] == 304
    )
    status, headers, _ = request(host.address, "/assets/app.3f2a9c1b.js")
    assert (status, headers["cache-control"]) == (200, "public, max-age=31536000, immutable")
    assert request(host.address, "/assets/missing.css")[2] == b"Not Found\n"  # tako-server's, not the app's
    assert request(host.address, "/assets/../tako.toml")[0] == 404  # sent as is: refused, not resolved


def test_a_deploy_serves_the_new_files_and_a_rollback_the_old_ones(
    cli: TakoCLI, host: Host, project: Path
) -> None:
    env = user_ssh_env(host)
    (project / "public" / "site.css").write_bytes(b"/* v2 */\n")
    (project / "public" / "site.css.gz").unlink()
    commit_all(project, "v2 styles")
    cli.ok("deploy", "--yes", cwd=project, env=env)
    assert request(host.address, "/assets/site.css")[2] == b"/* v2 */\n"
    assert "content-encoding" not in request(host.address, "/assets/site.css", "Accept-Encoding: gzip")[1]

    cli.ok("rollback", "--yes", cwd=project, env=env)
    assert request(host.address, "/assets/site.css")[2] == CSS


def test_a_missing_directory_stops_the_deploy_before_upload(cli: TakoCLI, host: Host, project: Path) -> None:
    toml = project / "tako.toml"
    toml.write_text(
        toml.read_text().replace('"/assets" = "public"', '"/assets" = "public", "/media" = "media"')
    )
    commit_all(project, "a mount without its directory")
    result = cli.run("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=300)
    assert result.returncode != 0
    assert (
        "[tako].static '/media': 'media' is not a directory of the project after the build" in result.stderr
    )
    assert request(host.address, "/assets/site.css")[0] == 200  # the live release serves on
