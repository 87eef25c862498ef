"""`tako logs --access`: the status filter and how a line of a server's access.log is shown."""

from __future__ import annotations

import json

import click
import pytest

from tako.cli.access_lines import parse_status, render

LINE = json.dumps(
    {"time": "T", "app": "a", "host": "h.test", "method": "GET", "path": "/x", "status": 502, "bytes_in": 1,
     "bytes_out": 2, "duration_ms": 3.2, "instance": None, "client": "c", "request_id": "r-1", "tls": True}
)  # fmt: skip


def test_status_filters() -> None:
    assert parse_status("5xx") == (500, 599) and parse_status("404") == (404, 404)
    assert parse_status(None) is None
    with pytest.raises(click.BadParameter, match="a class"):
        parse_status("6xx")


def test_lines_are_shown_with_their_server_and_id_or_dropped_by_the_filter() -> None:
    assert render("s1", LINE, (500, 599), as_json=False) == "[s1] T 502 GET h.test/x 3ms 2B c id=r-1"
    assert render("s1", LINE, (200, 299), as_json=False) is None
    assert json.loads(render("s1", LINE, None, as_json=True) or "")["server"] == "s1"
    assert render("s1", "not json", None, as_json=False) == "[s1] not json"
