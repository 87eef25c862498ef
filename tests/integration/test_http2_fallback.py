"""Without the libnghttp2 binding (or with TAKO_PURE_PYTHON=1) the HTTPS listener offers only HTTP/1.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.proxy_harness import one_app_proxy

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

HOST = "a.tako.test"


async def test_without_the_binding_alpn_offers_only_http11(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAKO_PURE_PYTHON", "1")
    async with one_app_proxy(tmp_path) as (p, _up):
        async with p.https(http2=True) as client:
            r = await client.get("/", headers={"host": HOST}, extensions={"sni_hostname": HOST})
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
