"""Path escapes from a static mount, fuzzed against a real tako-server: a release with secrets just outside
the mounted directory (a file beside it, the release's `.env` and `app.json`, a dotfile inside it, symlinks
leading out directly, through a directory, or in and then out) is asked for paths built from `..`, encoded
dots, slashes and backslashes, NUL, overlong UTF-8, absolute-form targets and Windows-style names. No answer
may carry a secret, and every 200 must be one of the files that are meant to be served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.proxy_harness import raw_exchange
from tests.support.raw_http import _UNVERIFIED
from tests.support.server_process import TakoServer, make_release, running_server

pytestmark = pytest.mark.integration

HOST = "shop.tako.test"
SECRET = b"SECRET-c0ffee"
SERVED = {b"fine\n", b"deep\n"}  # the contents of the files meant to be served
MARKERS = (SECRET, b"root:x:0:0", b"TAKO_BUILD", b'"start"')

TOKENS = (
    "..",
    ".",
    "...",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "..\\",
    "%00",
    "%c0%ae%c0%ae",
    "%e0%80%ae",
    "%c0%af",
    "%252e%252e",
    "..%2f",
    "..%5c",
    "ok.txt",
    "ok.txt%00.png",
    "sub",
    "deep.txt",
    "up",
    "far",
    "inout",
    "out.txt",
    "etc",
    "passwd",
    "secret.txt",
    ".env",
    "app.json",
    ".hidden",
    "public",
    "C:",
    "C:%5c",
    "",
    "%",
    "%zz",
)
PREFIXES = (
    "/static/",
    "/static",
    "//static/",
    "/static/./",
    "/static%2f",
    "https://shop.tako.test/static/",
    "http://shop.tako.test/static/",
)


def build_release(srv: TakoServer) -> Path:
    release = make_release(srv.data_dir, "shop", "v1", env={"SECRET_KEY": SECRET.decode()})
    meta = json.loads((release / "app.json").read_text())
    meta["static"] = {"/static": "public"}
    (release / "app.json").write_text(json.dumps(meta))
    public = release / "public"
    (public / "sub").mkdir(parents=True)
    (public / "ok.txt").write_bytes(b"fine\n")
    (public / "sub" / "deep.txt").write_bytes(b"deep\n")
    (public / ".hidden").write_bytes(SECRET + b" dotfile\n")
    (release / "secret.txt").write_bytes(SECRET + b" beside the mount\n")
    (public / "out.txt").symlink_to("../secret.txt")  # out, directly
    (public / "sub" / "up").symlink_to("..")  # in (the mount itself)
    (public / "sub" / "far").symlink_to("../..")  # out, to the release root
    (public / "inout").symlink_to("sub/far")  # in, then out
    (public / "etc").symlink_to("/etc")  # out, absolute
    return release


@pytest.fixture(scope="module")
def server() -> Iterator[TakoServer]:
    with running_server() as srv:
        release = build_release(srv)
        srv.call("deploy", app="shop", version="v1", path=str(release), routes=[HOST], instances=1)
        yield srv


def ask(srv: TakoServer, target: bytes) -> tuple[int, bytes]:
    assert srv.https_port
    request = b"GET " + target + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nConnection: close\r\n\r\n"
    raw = asyncio.run(
        raw_exchange(srv.https_port, request, ssl_context=_UNVERIFIED, server_hostname=HOST, timeout=30.0)
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


def check(srv: TakoServer, target: bytes) -> None:
    status, body = ask(srv, target)
    for marker in MARKERS:
        assert marker not in body, (target, status, body[:200])
    if status == 200 and body not in SERVED:
        # Only the app answers 200 with anything else (a path that is not under the mount at all).
        assert body.startswith(b"version=v1 "), (target, body[:200])


def test_the_files_meant_to_be_served_are(server: TakoServer) -> None:
    assert ask(server, b"/static/ok.txt") == (200, b"fine\n")
    assert ask(server, b"/static/sub/deep.txt") == (200, b"deep\n")
    assert ask(server, b"/static/sub/up/ok.txt") == (200, b"fine\n")  # a link that stays inside
    for target in (
        b"/static/out.txt",
        b"/static/inout/secret.txt",
        b"/static/etc/passwd",
        b"/static/.hidden",
    ):
        assert ask(server, target)[0] == 404, target


@pytest.mark.parametrize(
    "target",
    [
        b"/static/../secret.txt",
        b"/static/%2e%2e/secret.txt",
        b"/static/%2e%2e%2fsecret.txt",
        b"/static/..%5csecret.txt",
        b"/static/sub/far/secret.txt",
        b"/static/sub/far/.env",
        b"/static/inout/app.json",
        b"/static/etc/passwd",
        b"/static/%c0%ae%c0%ae/secret.txt",
        b"/static/ok.txt%00/../../secret.txt",
        b"https://shop.tako.test/static/../secret.txt",
        b"/static/C:%5c..%5csecret.txt",
        b"/static/sub/up/../../secret.txt",
        b"/static/%252e%252e/secret.txt",
    ],
)
def test_known_escapes_are_refused(server: TakoServer, target: bytes) -> None:
    check(server, target)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(PREFIXES),
    segments=st.lists(
        st.one_of(
            st.sampled_from(TOKENS),
            st.text(alphabet="./\\%25cefaA0:~", min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=8,
    ),
    tail=st.sampled_from(("", "secret.txt", "passwd", ".env", "app.json", ".hidden", "ok.txt")),
)
def test_fuzzed_paths_never_reach_a_secret(
    server: TakoServer, prefix: str, segments: list[str], tail: str
) -> None:
    target = prefix + "/".join(segments) + ("/" + tail if tail else "")
    check(server, target.encode())
