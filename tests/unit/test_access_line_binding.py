"""The compiled access line formatter (_access_lines.pyx) against the Python one (access_line.LineFormatter):
the same bytes for any batch of entries, whatever their text holds (every byte value in targets, ids,
methods and clients; any character in apps, hosts and instances) and whatever their figures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tako.server.proxy import access_line
from tako.server.proxy.compiled import ACCESS_BINDING, PURE_PYTHON_ENV, binding_problem

try:
    from tako.server.proxy import _access_lines
except ImportError:  # pragma: no cover - a checkout without a C compiler
    _access_lines = None

pytestmark = pytest.mark.skipif(
    _access_lines is None or binding_problem(ACCESS_BINDING) is not None,
    reason="the access line binding is not built (python setup.py build_ext --inplace)",
)

WALL = 1_796_000_000.0  # loop time 0 as UNIX time: 2026-11-28

_wire = st.binary(max_size=40)
_text = st.text(max_size=20)
_seconds = st.floats(min_value=0, max_value=100_000, allow_nan=False)
_entries = st.tuples(
    st.sampled_from(["web", "api", "é-app", 'q"uote']),  # app
    st.one_of(st.none(), _text),  # host
    st.one_of(st.sampled_from([b"GET", b"POST"]), _wire),  # method
    _seconds,  # started
    st.floats(min_value=0, max_value=10_000, allow_nan=False),  # duration, added to started
    st.one_of(st.just(0.0), st.floats(min_value=0, max_value=10_000, allow_nan=False)),  # sent_at
    st.integers(min_value=100, max_value=599),  # status
    _wire,  # url
    st.integers(min_value=0, max_value=2**62),  # bytes_in
    st.integers(min_value=0, max_value=2**62),  # bytes_out
    st.one_of(st.none(), _wire),  # request_id
    st.one_of(st.none(), _text),  # instance
    _wire,  # client
    st.booleans(),  # tls
    st.booleans(),  # websocket
)


def _entry(drawn: tuple[Any, ...]) -> access_line.Entry:
    """A drawn entry with `ended` made from `started` + the drawn duration, `sent_at` within the request."""
    started, duration, sent = drawn[3], drawn[4], drawn[5]
    ended = started + duration
    sent_at = min(started + sent, ended) if sent else 0.0
    return (*drawn[:4], ended, sent_at, *drawn[6:])


@settings(max_examples=400, deadline=None)
@given(st.lists(_entries, min_size=1, max_size=8), st.booleans())
def test_the_binding_writes_the_python_formatters_bytes(drawn: list[tuple[Any, ...]], query: bool) -> None:
    entries = [_entry(one) for one in drawn]
    expected = access_line.LineFormatter(query).format(entries, WALL)
    got = _access_lines.Formatter(query).format(entries, WALL)
    assert got == expected
    for lines in got.values():
        for line in lines.decode("ascii").splitlines():
            json.loads(line)


def test_a_formatter_keeps_its_second_across_batches_and_moves_on() -> None:
    formatter = _access_lines.Formatter(False)
    python = access_line.LineFormatter(False)
    base = (
        "web", "h", b"GET", 10.25, 10.5, 0.0, 200, b"/", 1, 2, b"id", "i", b"127.0.0.1", True, False
    )  # fmt: skip
    for started in (10.25, 10.75, 11.0, 9.5, 86_400 * 365.0):
        entry = (*base[:3], started, started + 0.001, *base[5:])
        assert formatter.format([entry], WALL) == python.format([entry], WALL)


def test_a_wrong_entry_is_an_error_not_a_crash() -> None:
    formatter = _access_lines.Formatter(False)
    with pytest.raises(ValueError, match="15 fields"):
        formatter.format([("web",)], WALL)
    with pytest.raises(TypeError):
        formatter.format(["not a tuple"], WALL)
    bad_url = ("web", "h", b"GET", 1.0, 2.0, 0.0, 200, "/str", 1, 2, None, None, b"c", False, False)
    with pytest.raises(TypeError):
        formatter.format([bad_url], WALL)


def test_access_log_uses_the_binding_unless_told_to_run_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    assert type(access_line.line_formatter(False)) is _access_lines.Formatter
    monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    assert type(access_line.line_formatter(False)) is access_line.LineFormatter
