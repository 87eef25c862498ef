"""End to end on one testbed host: tako-server installed from the wheel (with its zstandard and brotli
dependencies) compresses a deployed app's text answer in the coding the client asks for, and sends it as the
app wrote it once tako.toml says `compression = false`."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import brotli
import pytest
import zstandard
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import commit_all, make_project
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "zip1"
ROUTE = "zip.tako.test"
GREETING = "Hello from a page long enough to be worth compressing " * 40  # 2,200 bytes of text/plain


def request(address: str, accept: str) -> tuple[dict[str, str], bytes]:
    """One HTTPS request from this machine with `accept` as Accept-Encoding: headers (lower-case), body."""
    argv = ["curl", "-sS", "-k", "--max-time", "10", "--resolve", f"{ROUTE}:443:{address}", "-D", "-"]
    argv += ["-H", f"Accept-Encoding: {accept}", f"https://{ROUTE}/"]
    out = subprocess.run(argv, capture_output=True, timeout=15, check=False).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    _, *lines = head.decode("latin-1").split("\r\n")
    return {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}, body


DECODE = {
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
    "br": brotli.decompress,
    "gzip": gzip.decompress,
}


def test_the_installed_server_compresses_until_the_app_says_no(
    cli: TakoCLI, host: Host, tmp_path: Path
) -> None:
    project = make_project(
        tmp_path,
        name="zipped",
        route=ROUTE,
        servers={host.name: "production"},
        extra_toml=f'\n[vars]\nGREETING = "{GREETING}"\n',
    )
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
    for coding, decode in DECODE.items():
        headers, body = request(host.address, coding)
        assert headers.get("content-encoding") == coding, headers
        assert decode(body).startswith(GREETING.encode() + b"! build "), coding
        assert headers["vary"] == "Accept-Encoding" and "content-length" not in headers

    toml = project / "tako.toml"
    toml.write_text(toml.read_text().replace("[tako]\n", "[tako]\ncompression = false\n", 1))
    commit_all(project, "no compression")
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host))
    headers, body = request(host.address, "zstd, br, gzip")
    assert "content-encoding" not in headers and body.startswith(GREETING.encode())
