"""`tako status` output: every version whole, routes shown, one line per certificate, filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tako.cli.context import CliContext
from tako.cli.status import StatusFilter, render_status, status_filter
from tako.errors import UsageError
from tako.remote.connection import ServerAddress
from tako.remote.fanout import HostResult

VERSION = "3f9c2ab_5d1e0c77"  # a dirty tree's version: the longest kind
CERT_ERROR = "urn:ietf:params:acme:error:connection\nFetching http://a.example/.well-known/x:\n  Timeout"


def app(name: str, env: str, routes: list[str], certificates: dict[str, Any]) -> dict[str, Any]:
    return {
        "app": name,
        "env": env,
        "state": "running",
        "instances": [{"healthy": True}],
        "version": VERSION,
        "deployed_at": "2026-12-06T10:00:00Z",
        "routes": routes,
        "certificates": certificates,
        "last_error": None,
    }


def render(apps: list[dict[str, Any]], width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    result = HostResult(ServerAddress("web1", "10.0.0.5"), {"server_version": "0.9", "apps": apps})
    render_status(console, [result])
    return console.export_text()


def test_a_narrow_terminal_never_cuts_a_version() -> None:
    text = render([app("shop", "production", ["shop.example.com", "www.shop.example.com/*"], {})], 60)
    assert VERSION in text, text
    assert "shop: routes shop.example.com, www.shop.example.com/*" in " ".join(text.split()), text


def test_a_certificate_problem_is_one_line_once_per_host() -> None:
    pending = {"state": "pending", "last_error": CERT_ERROR}
    apps = [
        app("shop", "production", ["a.example/shop/*"], {"a.example": pending}),
        app("blog", "production", ["a.example/blog/*"], {"a.example": pending}),
    ]
    text = render(apps, 200)
    lines = [line for line in text.splitlines() if "certificate for a.example" in line]
    assert len(lines) == 1, text
    assert lines[0].strip() == (
        "certificate for a.example: pending (urn:ietf:params:acme:error:connection Fetching "
        "http://a.example/.well-known/x: Timeout)"
    )
    assert "Timeout\n" not in text


def test_filter_keeps_apps_by_name_and_env() -> None:
    shop = app("shop", "production", [], {})
    assert StatusFilter().keeps(shop)
    assert StatusFilter(app="shop").keeps(shop) and not StatusFilter(app="blog").keeps(shop)
    assert StatusFilter(env="production").keeps(shop) and not StatusFilter(env="staging").keeps(shop)


def project_cli(tmp_path: Path) -> CliContext:
    (tmp_path / "tako.toml").write_text(
        '[tako]\nname = "shop"\n\n[envs.production]\nroute = "shop.example.com"\n'
        '[envs.staging]\nroute = "staging.shop.example.com"\n\n'
        '[servers.web1]\nenv = "production"\n[servers.web2]\nenv = "production"\n'
        '[servers.stage1]\nenv = "staging"\n'
    )
    return CliContext.create(cwd=tmp_path)


def test_env_in_a_project_means_its_servers_and_its_app(tmp_path: Path) -> None:
    cli = project_cli(tmp_path)
    assert status_filter(cli, "production", None) == StatusFilter(
        servers=frozenset({"web1", "web2"}), app="shop", env="production"
    )
    assert status_filter(cli, "staging", "other").app == "other"
    assert status_filter(cli, None, None) == StatusFilter()
    with pytest.raises(UsageError, match="prodution"):
        status_filter(cli, "prodution", None)


def test_env_outside_a_project_filters_on_what_the_servers_recorded(tmp_path: Path) -> None:
    cli = CliContext.create(cwd=tmp_path)
    assert status_filter(cli, "staging", "shop") == StatusFilter(app="shop", env="staging")


def test_each_app_shows_its_last_minute_of_traffic() -> None:
    busy = app("shop", "production", [], {})
    busy["traffic"] = {
        "window_seconds": 60.0,
        "requests": 740,
        "requests_per_second": 12.333,
        "error_rate": 0.0135,
        "p95_seconds": 0.0452,
    }
    quiet = app("blog", "production", [], {})
    quiet["traffic"] = {
        "window_seconds": 20.0,
        "requests": 0,
        "requests_per_second": 0.0,
        "error_rate": None,
        "p95_seconds": None,
    }
    older_server = app("docs", "production", [], {})  # a tako-server without figures: no line
    text = " ".join(render([busy, quiet, older_server], 200).split())
    assert "shop: last minute: 12.3 requests/s, 1.4% 5xx, p95 45 ms" in text, text
    assert "blog: last 20 s: no requests" in text, text
    assert "docs: last" not in text, text


def test_a_server_running_another_tako_server_version_gets_one_warning_line() -> None:
    from tako import __version__

    def lines(server_version: str) -> list[str]:
        console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        result = HostResult(ServerAddress("web1", "10.0.0.5"), {"server_version": server_version, "apps": []})
        render_status(console, [result])
        return [line for line in console.export_text().splitlines() if "differs" in line]

    assert lines(__version__) == []
    (warning,) = lines("0.0.1")
    assert "tako-server 0.0.1 on web1" in warning and __version__ in warning
    assert "tako servers upgrade web1" in warning
