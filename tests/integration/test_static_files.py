"""`[tako] static` on a real tako-server: files under a mount are served from the live release by tako-server
itself (validators, 304, ranges, precompressed siblings, cache headers), never by the app; a miss is a 404
of tako-server's; a new release's files are served after a deploy and a rollback without a restart."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.raw_http import RawResponse, fetch
from tests.support.server_process import ControlError, TakoServer, make_release, running_server, wait_for

from tako.server.proxy import h2 as proxy_h2

pytestmark = pytest.mark.integration

HOST = "shop.tako.test"
CSS = b"body { color: #333; }\n" * 40  # 880 bytes
BIG = os.urandom(3 * 1024 * 1024 + 17)  # over the in-memory size: streamed from the file


@pytest.fixture
def server() -> Iterator[TakoServer]:
    with running_server() as srv:
        yield srv


def static_release(srv: TakoServer, version: str, files: dict[str, bytes], *, mounts: object = None) -> Path:
    """A release whose app.json maps /static to public/, with `files` under public/."""
    release = make_release(srv.data_dir, "shop", version)
    meta = json.loads((release / "app.json").read_text())
    meta["static"] = {"/static": "public"} if mounts is None else mounts
    (release / "app.json").write_text(json.dumps(meta))
    for name, data in files.items():
        path = release / "public" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (release / "public").mkdir(exist_ok=True)
    return release


def deploy(srv: TakoServer, release: Path, version: str) -> None:
    srv.call("deploy", app="shop", version=version, path=str(release), routes=[HOST], instances=1)


def get(srv: TakoServer, path: str, method: str = "GET", **headers: str) -> RawResponse:
    assert srv.https_port
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return asyncio.run(fetch(srv.https_port, HOST, path, named, method=method))


def test_a_file_is_served_with_its_type_validators_and_cache_headers(server: TakoServer) -> None:
    files = {"site.css": CSS, "app.3f2a9c1b.js": b"console.log(1)\n", "data.bin": b"\x00\x01"}
    deploy(server, static_release(server, "v1", files), "v1")

    answer = get(server, "/static/site.css")
    assert (answer.status, answer.body) == (200, CSS)
    assert answer.header("content-type") == "text/css; charset=utf-8"
    assert answer.header("cache-control") == "no-cache"
    assert answer.header("etag") and answer.header("last-modified")
    assert answer.header("accept-ranges") == "bytes"
    assert answer.header("x-request-id")
    assert answer.header("vary") is None  # no precompressed sibling: nothing to vary on

    hashed = get(server, "/static/app.3f2a9c1b.js")
    assert hashed.header("cache-control") == "public, max-age=31536000, immutable"
    assert hashed.header("content-type") == "text/javascript; charset=utf-8"
    assert get(server, "/static/data.bin").header("content-type") == "application/octet-stream"

    head = get(server, "/static/site.css", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(CSS)))


def test_misses_and_other_methods_are_answered_by_tako_server_not_the_app(server: TakoServer) -> None:
    deploy(server, static_release(server, "v1", {"site.css": CSS, "sub/a.txt": b"a"}), "v1")
    for path in ("/static/missing.css", "/static/", "/static", "/static/sub", "/static/sub/"):
        answer = get(server, path)
        assert (answer.status, answer.body) == (404, b"Not Found\n"), path
    post = get(server, "/static/site.css", method="POST", content_length="0")
    assert (post.status, post.header("allow")) == (405, "GET, HEAD")
    # Outside the mount the app answers (its version), and a prefix is a whole path segment.
    assert get(server, "/staticfile").body.startswith(b"version=v1 ")
    assert get(server, "/").body.startswith(b"version=v1 ")


def test_conditional_requests_get_304(server: TakoServer) -> None:
    deploy(server, static_release(server, "v1", {"site.css": CSS}), "v1")
    first = get(server, "/static/site.css")
    etag, modified = first.header("etag"), first.header("last-modified")
    assert etag and modified

    by_tag = get(server, "/static/site.css", if_none_match=f'"other", W/{etag}')
    assert (by_tag.status, by_tag.body, by_tag.header("etag")) == (304, b"", etag)
    by_date = get(server, "/static/site.css", if_modified_since=modified)
    assert by_date.status == 304
    # If-None-Match decides when both are sent: a different tag means the file changed.
    both = get(server, "/static/site.css", if_none_match='"other"', if_modified_since=modified)
    assert (both.status, both.body) == (200, CSS)
    older = get(server, "/static/site.css", if_modified_since="Mon, 01 Jan 2001 00:00:00 GMT")
    assert older.status == 200


def test_ranges(server: TakoServer) -> None:
    deploy(server, static_release(server, "v1", {"site.css": CSS, "big.bin": BIG}), "v1")
    size = len(CSS)
    part = get(server, "/static/site.css", range="bytes=10-19")
    assert (part.status, part.body) == (206, CSS[10:20])
    assert part.header("content-range") == f"bytes 10-19/{size}"
    assert get(server, "/static/site.css", range="bytes=-5").body == CSS[-5:]
    assert get(server, "/static/site.css", range=f"bytes={size - 3}-").body == CSS[-3:]
    beyond = get(server, "/static/site.css", range=f"bytes={size}-")
    assert (beyond.status, beyond.header("content-range")) == (416, f"bytes */{size}")
    several = get(server, "/static/site.css", range="bytes=0-1,5-6")
    assert (several.status, several.body) == (200, CSS)  # multiple ranges: the whole file
    stale = get(server, "/static/site.css", range="bytes=0-1", if_range='"not-this-one"')
    assert (stale.status, stale.body) == (200, CSS)
    etag = part.header("etag")
    assert get(server, "/static/site.css", range="bytes=0-1", if_range=str(etag)).status == 206

    streamed = get(server, "/static/big.bin", range="bytes=1000000-2999999")
    assert (streamed.status, streamed.body) == (206, BIG[1000000:3000000])


def test_a_large_file_is_streamed_whole(server: TakoServer) -> None:
    deploy(server, static_release(server, "v1", {"big.bin": BIG}), "v1")
    answer = get(server, "/static/big.bin")
    assert answer.status == 200
    assert hashlib.sha256(answer.body).digest() == hashlib.sha256(BIG).digest()


def test_precompressed_siblings_are_chosen_by_accept_encoding(server: TakoServer) -> None:
    files = {"site.css": CSS, "site.css.gz": gzip.compress(CSS), "site.css.br": b"brotli bytes"}
    deploy(server, static_release(server, "v1", files), "v1")

    br = get(server, "/static/site.css", accept_encoding="gzip, deflate, br")
    assert (br.body, br.header("content-encoding"), br.header("vary")) == (
        b"brotli bytes",
        "br",
        "Accept-Encoding",
    )
    assert br.header("content-type") == "text/css; charset=utf-8"
    gz = get(server, "/static/site.css", accept_encoding="gzip")
    assert gz.header("content-encoding") == "gzip" and gzip.decompress(gz.body) == CSS
    plain = get(server, "/static/site.css")
    assert (plain.body, plain.header("content-encoding"), plain.header("vary")) == (
        CSS,
        None,
        "Accept-Encoding",
    )
    refused = get(server, "/static/site.css", accept_encoding="br;q=0, gzip;q=0")
    assert refused.body == CSS
    assert len({br.header("etag"), gz.header("etag"), plain.header("etag")}) == 3
    # A range is served from the file itself, whatever the client accepts.
    ranged = get(server, "/static/site.css", accept_encoding="br", range="bytes=0-3")
    assert (ranged.status, ranged.body, ranged.header("content-encoding")) == (206, CSS[:4], None)


def test_the_live_release_is_served_after_a_deploy_and_a_rollback(server: TakoServer) -> None:
    deploy(server, static_release(server, "v1", {"site.css": b"one"}), "v1")
    assert get(server, "/static/site.css").body == b"one"
    deploy(server, static_release(server, "v2", {"site.css": b"two", "new.css": b"new"}), "v2")
    assert get(server, "/static/site.css").body == b"two"
    assert get(server, "/static/new.css").body == b"new"
    deploy(server, server.data_dir / "apps" / "shop" / "releases" / "v1", "v1")  # what a rollback sends
    assert get(server, "/static/site.css").body == b"one"
    assert get(server, "/static/new.css").status == 404


@pytest.mark.parametrize(
    ("mounts", "message"),
    [
        ({"/static": "missing"}, "'missing' is not a directory inside the release"),
        ({"/static": "."}, "is not a directory inside the release"),
        ({"/static": "../.."}, "must stay inside the project"),
        ({"/": "public"}, "must name a path below '/'"),
        ({"/static": "/etc"}, "must be relative to the project"),
    ],
)
def test_a_bad_mount_is_refused_at_deploy(server: TakoServer, mounts: object, message: str) -> None:
    release = static_release(server, "v1", {}, mounts=mounts)
    with pytest.raises(ControlError) as caught:
        deploy(server, release, "v1")
    assert message in str(caught.value)


def test_a_mount_linked_out_of_the_release_is_refused_at_deploy(server: TakoServer, tmp_path: Path) -> None:
    release = static_release(server, "v1", {}, mounts={"/static": "linked"})
    (release / "linked").symlink_to(tmp_path)
    with pytest.raises(ControlError) as caught:
        deploy(server, release, "v1")
    assert "'linked' is not a directory inside the release" in str(caught.value)


def test_data_plane_workers_serve_the_live_release_too() -> None:
    server = TakoServer()
    server.config.write_text(server.config.read_text() + "\n[server]\nworkers = 2\n")
    try:
        server.start()
        deploy(server, static_release(server, "v1", {"site.css": b"one", "big.bin": BIG}), "v1")
        # Fresh connections land on either process (SO_REUSEPORT): ask often enough to meet both.
        for _ in range(12):
            assert get(server, "/static/site.css").body == b"one"
        assert hashlib.sha256(get(server, "/static/big.bin").body).digest() == hashlib.sha256(BIG).digest()
        deploy(server, static_release(server, "v2", {"site.css": b"two"}), "v2")
        for _ in range(12):
            assert get(server, "/static/site.css").body == b"two"
            assert get(server, "/static/big.bin").status == 404
    finally:
        server.cleanup()


def test_a_file_changed_in_place_is_served_anew(server: TakoServer) -> None:
    release = static_release(server, "v1", {"site.css": b"before"})
    deploy(server, release, "v1")
    assert get(server, "/static/site.css").body == b"before"
    (release / "public" / "site.css").write_bytes(b"after, longer")
    wait_for(lambda: get(server, "/static/site.css").body == b"after, longer", timeout=10)


async def _over_http2(port: int, paths: list[str], **headers: str) -> list[httpx.Response]:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", http2=True, verify=False) as client:
        return await asyncio.gather(
            *(
                client.get(path, headers={"Host": HOST, **named}, extensions={"sni_hostname": HOST})
                for path in paths
            )
        )


@pytest.mark.skipif(not proxy_h2.available(), reason="HTTP/2 is not offered (no libnghttp2 binding)")
def test_http2_streams_get_the_same_answers(server: TakoServer) -> None:
    """Many streams on one HTTP/2 connection, small and large files at once (the large ones under the
    stream's flow control), a range, a 304 and a miss."""
    deploy(server, static_release(server, "v1", {"site.css": CSS, "big.bin": BIG}), "v1")
    assert server.https_port
    paths = ["/static/site.css", "/static/big.bin"] * 4 + ["/static/missing.css"]
    answers = asyncio.run(_over_http2(server.https_port, paths))
    assert {a.http_version for a in answers} == {"HTTP/2"}
    for path, answer in zip(paths, answers, strict=True):
        if path.endswith("missing.css"):
            assert answer.status_code == 404
        else:
            assert answer.status_code == 200 and answer.content == (CSS if path.endswith(".css") else BIG)
    (ranged,) = asyncio.run(_over_http2(server.https_port, ["/static/big.bin"], range="bytes=10-19"))
    assert (ranged.status_code, ranged.content) == (206, BIG[10:20])
    etag = answers[0].headers["etag"]
    (cached,) = asyncio.run(_over_http2(server.https_port, ["/static/site.css"], if_none_match=etag))
    assert (cached.status_code, cached.content) == (304, b"")


def test_in_maintenance_static_paths_get_the_maintenance_page_too(server: TakoServer) -> None:
    deploy(server, static_release(server, "v1", {"site.css": CSS}), "v1")
    server.call("maintenance", app="shop", on=True, message="Back soon")
    answer = get(server, "/static/site.css")
    assert answer.status == 503 and b"Back soon" in answer.body
    server.call("maintenance", app="shop", on=True, message="Back soon", allow=["127.0.0.1"])
    assert get(server, "/static/site.css").body == CSS  # a client let through gets the file
