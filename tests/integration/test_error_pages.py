"""An app's own error pages (`errors/502.html`, `503.html` in its release) on a real tako-server: used for
tako-server's own answers of that app, read at deploy; other apps keep the plain default pages; a page
over the size limit is refused at deploy with a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.test_maintenance import fetch
from tests.support.server_process import ControlError, TakoServer, make_release, running_server

pytestmark = pytest.mark.integration

# Answers its health check, and closes every other connection without a response: the proxy answers 502.
BROKEN_APP = """
import os, socket
server = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = server.accept()
    request = conn.recv(65536)
    if request.startswith(b"GET /_tako/status "):
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    conn.close()
"""


@pytest.fixture
def server() -> Iterator[TakoServer]:
    with running_server() as srv:
        yield srv


def release_with_pages(srv: TakoServer, version: str, pages: dict[str, str]) -> Path:
    release = make_release(srv.data_dir, "shop", version, start="python3 broken.py")
    (release / "broken.py").write_text(BROKEN_APP)
    (release / "errors").mkdir()
    for name, text in pages.items():
        (release / "errors" / name).write_text(text)
    return release


def deploy(srv: TakoServer, release: Path, version: str) -> None:
    srv.call("deploy", app="shop", version=version, path=str(release), routes=["shop.tako.test"], instances=1)


def test_an_app_that_cannot_answer_gets_its_own_502_page_and_its_503_page_when_stopped(
    server: TakoServer,
) -> None:
    pages = {"502.html": "<h1>Shop is having trouble</h1>\n", "503.html": "<h1>Shop is closed</h1>\n"}
    deploy(server, release_with_pages(server, "v1", pages), "v1")
    answer = fetch(server)
    assert (answer.status, answer.body) == (502, "<h1>Shop is having trouble</h1>\n")
    assert answer.headers["content-type"] == "text/html; charset=utf-8"

    server.call("stop", app="shop")
    answer = fetch(server)
    assert (answer.status, answer.body) == (503, "<h1>Shop is closed</h1>\n")


def test_without_pages_the_plain_default_stays(server: TakoServer) -> None:
    deploy(server, release_with_pages(server, "v1", {}), "v1")
    answer = fetch(server)
    assert answer.status == 502
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.body.startswith("Bad Gateway")


def test_a_page_over_the_limit_is_refused_at_deploy(server: TakoServer) -> None:
    release = release_with_pages(server, "v1", {"502.html": "x" * (64 * 1024 + 1)})
    with pytest.raises(ControlError) as caught:
        deploy(server, release, "v1")
    assert "errors/502.html is 65537 bytes; a page may be at most 65536 bytes" in str(caught.value)


def test_a_linked_page_is_refused_at_deploy(server: TakoServer) -> None:
    release = release_with_pages(server, "v1", {})
    (release / "errors" / "502.html").symlink_to("/etc/passwd")
    with pytest.raises(ControlError) as caught:
        deploy(server, release, "v1")
    assert "errors/502.html cannot be read" in str(caught.value)
