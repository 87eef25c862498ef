"""Property tests: the precomputed RouteTable agrees with a brute-force reference, normalisation is
idempotent, and only identical normalised patterns conflict."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tako.routing import (
    RouteConflict,
    RoutePattern,
    RouteTable,
    find_conflicts,
    normalise_host,
    parse_route,
)

# Small alphabets so that generated requests and patterns overlap often.
LABELS = ["a", "b", "api", "example", "com", "x-1"]
SEGMENTS = ["a", "b", "api", "apix", "v1", "A", "x.y", "%2F", "a%2Fb"]

labels = st.sampled_from(LABELS)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
segments = st.sampled_from(SEGMENTS)


@st.composite
def route_texts(draw: st.DrawFn) -> str:
    """Route text in any accepted spelling: random case, optional `/*`, optional trailing dot."""
    host = draw(hosts)
    if draw(st.booleans()):
        host = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    if draw(st.booleans()):
        host = "*." + host
    if draw(st.integers(0, 5)) == 0:
        host += "."
    parts = draw(st.lists(st.sampled_from([s for s in SEGMENTS if "%" not in s]), max_size=3))
    kind = draw(st.sampled_from(["none", "catch-all", "exact", "exact-slash", "prefix"]))
    if kind == "none":
        return host
    if kind == "catch-all":
        return host + "/*"
    path = "/" + "/".join(parts)
    if kind == "exact":
        return host + path
    if kind == "exact-slash":
        return host + path.rstrip("/") + "/"
    return host + path.rstrip("/") + "/*"


patterns = route_texts().map(parse_route)


@st.composite
def request_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(segments, st.just("")), max_size=5))
    path = "/" + "/".join(parts)
    if draw(st.booleans()):
        path += "/"
    if draw(st.integers(0, 10)) == 0:
        return draw(st.sampled_from(["", "*", "//"]))
    return path


def brute_force(entries: dict[RoutePattern, int], host: str, path: str) -> int | None:
    matching = [p for p in entries if p.matches(host, path)]
    if not matching:
        return None
    return entries[max(matching, key=RoutePattern.specificity)]


@st.composite
def request_near(draw: st.DrawFn, pattern_list: list[RoutePattern]) -> tuple[str, str]:
    """A request that is often close to one of the patterns: same host or a subdomain, a path equal to,
    extending, or almost the pattern's path."""
    if not pattern_list or draw(st.integers(0, 4)) == 0:
        return draw(hosts), draw(request_paths())
    pattern = draw(st.sampled_from(pattern_list))
    host = pattern.host
    if pattern.wildcard or draw(st.integers(0, 3)) == 0:
        host = ".".join(draw(st.lists(labels, min_size=1, max_size=2))) + "." + host
    path = pattern.path
    tweak = draw(st.sampled_from(["same", "extend", "slash", "suffix", "double", "random"]))
    if tweak == "extend":
        path = path.rstrip("/") + draw(request_paths())
    elif tweak == "slash":
        path += "/"
    elif tweak == "suffix":
        path += draw(segments)
    elif tweak == "double":
        path = "/" + path
    elif tweak == "random":
        path = draw(request_paths())
    return host, path


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns, max_size=12), st.data())
def test_table_agrees_with_brute_force(pattern_list: list[RoutePattern], data: st.DataObject) -> None:
    entries = {p: i for i, p in enumerate(dict.fromkeys(pattern_list))}
    table = RouteTable(entries.items())
    requests = data.draw(st.lists(request_near(list(entries)), min_size=1, max_size=10))
    for host, path in requests:
        assert table.match(host, path) == brute_force(entries, host, path), (host, path)
        if table.same_for_every_path(host):
            others = [path, "/", "", "*", "//", *(p.path for p in entries)]
            assert {table.match(host, other) for other in others} == {table.match(host, path)}, host
        assert table.is_routed_host(host) == any(p.matches_host(host) for p in entries)
    assert table.hosts() == {p.host for p in entries if not p.wildcard}


@settings(max_examples=300, deadline=None)
@given(patterns, patterns, hosts, request_paths())
def test_specificity_is_a_total_order_on_matching_patterns(
    first: RoutePattern, second: RoutePattern, host: str, path: str
) -> None:
    assume(first != second)
    if first.matches(host, path) and second.matches(host, path):
        assert first.specificity() != second.specificity()


@settings(max_examples=300, deadline=None)
@given(route_texts())
def test_normalisation_is_idempotent(text: str) -> None:
    pattern = parse_route(text)
    once = pattern.normalised()
    again = parse_route(once)
    assert again == pattern
    assert again.normalised() == once
    assert parse_route(text.lower()).host == pattern.host


@settings(max_examples=300, deadline=None)
@given(route_texts(), route_texts())
def test_only_identical_normalised_patterns_conflict(first: str, second: str) -> None:
    same = parse_route(first).normalised() == parse_route(second).normalised()
    assert same == (parse_route(first) == parse_route(second))
    try:
        RouteTable([(parse_route(first), "one"), (parse_route(second), "two")])
        conflicted = False
    except RouteConflict:
        conflicted = True
    assert conflicted == same
    assert bool(find_conflicts("new", [first], {"old": [second]})) == same


@settings(max_examples=300, deadline=None)
@given(hosts, st.one_of(st.none(), st.integers(1, 65535)), st.booleans(), st.booleans())
def test_normalise_host_ignores_case_port_and_trailing_dot(
    host: str, port: int | None, upper: bool, trailing_dot: bool
) -> None:
    header = host.upper() if upper else host
    if trailing_dot:
        header += "."
    if port is not None:
        header += f":{port}"
    assert normalise_host(header) == host
    assert normalise_host(host) == host


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_normalise_host_is_idempotent_on_any_text(text: str) -> None:
    host = normalise_host(text)
    if host is not None:
        assert normalise_host(host) == host
        assert host == host.lower()
        assert ":" not in host or host.startswith("[")
