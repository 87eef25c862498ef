"""Choosing a content coding from a request's Accept-Encoding value."""

from __future__ import annotations

import pytest

from tako.server.proxy.encoding_negotiation import MAX_ELEMENTS, best_encoding, parse_accept_encoding

ALL = ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gzip, deflate, br, zstd", "zstd"),  # what current browsers send: the server's order decides
        ("gzip, deflate, br", "br"),
        ("gzip, deflate", "gzip"),
        ("deflate", None),
        ("", None),  # an empty value means identity only
        ("identity", None),
        ("br;q=0.5, gzip;q=0.8", "gzip"),  # the client's q-values decide first
        ("zstd;q=0.1, br;q=0.1, gzip;q=0.1", "zstd"),  # equal q-values: the server's order
        ("*", "zstd"),
        ("*;q=0.5, gzip", "gzip"),
        ("*, zstd;q=0", "br"),  # * stands for the codings not named
        ("gzip;q=0", None),
        ("*;q=0", None),
        ("identity;q=0", None),  # nothing acceptable: sent as it is
        ("identity;q=0, gzip", "gzip"),
        ("GZIP, BR;Q=0.9", "gzip"),  # case-insensitive, names and parameters
        ("  gzip  ;  q=1.000 ,br;q=0.999", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip;q=0, x-gzip", None),  # the same coding twice: the first element counts
        (",,, ,gzip,,", "gzip"),  # empty elements are allowed by the list syntax
        ("gzip;level=9;q=0.7, br;q=0.6", "gzip"),  # other parameters ignored
    ],
)
def test_best_encoding(value: str, expected: str | None) -> None:
    assert best_encoding(value, ALL) == expected
    assert best_encoding(value.encode("latin-1"), ALL) == expected  # bytes, as the proxy reads it


@pytest.mark.parametrize(
    "element",
    [
        "br;q=2",
        "br;q=1.5",
        "br;q=-1",
        "br;q=",
        "br;q=abc",
        "br;q=0.1234",
        "br;q=0.5x",
        "br;q=1..",
        "br;q=0.\xb2",
    ],
)
def test_a_bad_q_value_leaves_the_element_out(element: str) -> None:
    assert "br" not in parse_accept_encoding(element)
    assert best_encoding(element + ", gzip;q=0.1", ALL) == "gzip"  # the rest of the value still counts


def test_only_available_codings_are_chosen() -> None:
    assert best_encoding("zstd, br", ("gzip",)) is None
    assert best_encoding("zstd, br, gzip", ("gzip",)) == "gzip"
    assert best_encoding("*", ()) is None


def test_a_huge_value_is_read_only_up_to_its_first_elements() -> None:
    junk = ", ".join(f"junk{i};q=0.{i % 10}" for i in range(10_000))
    assert best_encoding(junk + ", gzip", ALL) is None  # gzip is past the elements read
    assert len(parse_accept_encoding(junk)) == MAX_ELEMENTS
    assert best_encoding("gzip, " + junk, ALL) == "gzip"


def test_non_ascii_bytes_are_tolerated() -> None:
    assert best_encoding(b"\xff\xfe, gzip;q=0.5, \x00br", ALL) == "gzip"
