"""Route parsing, normalisation, precedence, host normalisation and conflicts."""

from __future__ import annotations

import pytest

from tako.routing import (
    Conflict,
    RouteConflict,
    RouteError,
    RoutePattern,
    RouteTable,
    find_conflicts,
    normalise_host,
    parse_route,
    parse_routes,
)

# --- parsing and normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", RoutePattern("example.com", False, "/", True)),
        ("example.com/*", RoutePattern("example.com", False, "/", True)),
        ("example.com/", RoutePattern("example.com", False, "/", False)),
        ("example.com/api", RoutePattern("example.com", False, "/api", False)),
        ("example.com/api/", RoutePattern("example.com", False, "/api/", False)),
        ("example.com/api/*", RoutePattern("example.com", False, "/api", True)),
        ("*.example.com", RoutePattern("example.com", True, "/", True)),
        ("*.example.com/v1/*", RoutePattern("example.com", True, "/v1", True)),
        ("localhost", RoutePattern("localhost", False, "/", True)),
        ("127.0.0.1/x", RoutePattern("127.0.0.1", False, "/x", False)),
        ("[::1]", RoutePattern("[::1]", False, "/", True)),
        ("[2001:DB8:0::1]/api/*", RoutePattern("[2001:db8::1]", False, "/api", True)),
        ("example.com.", RoutePattern("example.com", False, "/", True)),
        ("xn--bcher-kva.de", RoutePattern("xn--bcher-kva.de", False, "/", True)),
        ("a-b.c0m/p:a@t;h=1,x~y", RoutePattern("a-b.c0m", False, "/p:a@t;h=1,x~y", False)),
    ],
)
def test_parse_route(text: str, expected: RoutePattern) -> None:
    assert parse_route(text) == expected


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("example.com", "example.com/*"),
        ("example.com/*", "example.com/*"),
        ("Example.COM", "example.com/*"),
        ("*.Example.com/API/*", "*.example.com/API/*"),
        ("example.com/exact", "example.com/exact"),
        ("example.com/", "example.com/"),
        ("[0:0::1]/a/*", "[::1]/a/*"),
    ],
)
def test_normalised(text: str, normalised: str) -> None:
    pattern = parse_route(text)
    assert pattern.normalised() == normalised
    assert str(pattern) == normalised
    assert parse_route(normalised) == pattern


def test_host_is_lowercased_and_path_case_is_kept() -> None:
    assert parse_route("Example.com") == parse_route("example.com")
    assert parse_route("example.com/API") != parse_route("example.com/api")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\t", "empty"),
        ("example.com /api", "whitespace"),
        (" example.com", "whitespace"),
        ("example.com\n", "whitespace"),
        ("https://example.com", "scheme 'https://'"),
        ("http://example.com/api/*", "scheme"),
        ("/api/*", "path-only"),
        ("/", "path-only"),
        ("example.com:8080", "remove the port ':8080'"),
        ("example.com:8080/api", "remove the port"),
        ("[::1]:8080", "remove the port"),
        ("example.com:abc", "must not contain ':'"),
        ("2001:db8::1", "IPv6 address in brackets"),
        ("[::1", "closed with ']'"),
        ("[::1]x", "unexpected"),
        ("[not-an-ip]", "not a valid IPv6"),
        ("user@example.com", "'@'"),
        ("bücher.de", "punycode"),
        ("*", "bare '*'"),
        ("*.", "needs a domain"),
        ("*.*.example.com", "whole first label"),
        ("a.*.example.com", "whole first label"),
        ("*example.com", "whole first label"),
        ("ex*ample.com", "whole first label"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("-a.com", "'-a' is invalid"),
        ("a-.com", "'a-' is invalid"),
        ("a_b.com", "'a_b' is invalid"),
        ("a!.com", "is invalid"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("example.com?x=1", "query string"),
        ("example.com/#top", "fragment"),
        ("example.com/api*", "last path segment"),
        ("example.com/*/x", "last path segment"),
        ("example.com/a/**", "last path segment"),
        ("example.com/a%2Fb", "'%'"),
        ("example.com/a\\b", "character '\\\\'"),
        ('example.com/a"b', "character"),
        ("example.com//a", "empty segment"),
        ("example.com/a//*", "empty segment"),
        ("example.com/a/../b", "'..'"),
        ("example.com/./b", "'.'"),
        ("example.com/..", "'..'"),
    ],
)
def test_rejected_routes(text: str, problem: str) -> None:
    with pytest.raises(RouteError) as info:
        parse_route(text)
    message = str(info.value)
    assert problem in message
    assert repr(text) in message
    assert "accepted forms: example.com, *.example.com" in message
    assert isinstance(info.value, ValueError)
    assert info.value.route == text


def test_non_string_route_is_rejected() -> None:
    with pytest.raises(RouteError, match="must be a string"):
        parse_route(42)  # type: ignore[arg-type]


def test_parse_routes_rejects_the_same_pattern_twice() -> None:
    assert [p.normalised() for p in parse_routes(["a.com", "a.com/x"])] == ["a.com/*", "a.com/x"]
    with pytest.raises(RouteError, match=r"same route as 'Example\.com'"):
        parse_routes(["Example.com", "example.com/*"])


# --- specificity and matching ---------------------------------------------------------------------------


def _specificity_order(*texts: str) -> list[str]:
    return [p.normalised() for p in sorted((parse_route(t) for t in texts), key=RoutePattern.specificity)]


def test_specificity_order() -> None:
    assert _specificity_order(
        "example.com/api/*", "*.example.com/a/b/c/d", "example.com", "example.com/api", "*.b.example.com"
    ) == [
        "*.example.com/a/b/c/d",
        "*.b.example.com/*",
        "example.com/*",
        "example.com/api/*",
        "example.com/api",
    ]


def test_pattern_matches() -> None:
    api = parse_route("example.com/api/*")
    assert api.matches("example.com", "/api")
    assert api.matches("example.com", "/api/")
    assert api.matches("example.com", "/api/x/y")
    assert api.matches("example.com", "//api//x")
    assert not api.matches("example.com", "/apix")
    assert not api.matches("example.com", "/api%2Fx")
    assert not api.matches("example.com", "/")
    assert not api.matches("www.example.com", "/api")
    exact = parse_route("example.com/api")
    assert exact.matches("example.com", "/api")
    assert not exact.matches("example.com", "/api/")
    assert parse_route("example.com/").matches("example.com", "")
    wildcard = parse_route("*.example.com")
    assert wildcard.matches("a.example.com", "/x")
    assert wildcard.matches("a.b.example.com", "/x")
    assert not wildcard.matches("example.com", "/x")
    assert not wildcard.matches("aexample.com", "/x")


TABLE_ROUTES = {
    "example.com": "site",
    "example.com/api/*": "api",
    "example.com/api/health": "health",
    "example.com/": "home",
    "*.example.com": "tenant",
    "*.eu.example.com": "eu",
    "*.eu.example.com/api/*": "eu-api",
    "admin.example.com/*": "admin",
    "api.example.com/v1/*": "v1",
    "[::1]": "v6",
    "localhost/app/*": "local",
}


@pytest.fixture
def table() -> RouteTable[str]:
    return RouteTable((parse_route(r), app) for r, app in TABLE_ROUTES.items())


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # exact host: longest path wins, exact over prefix on equal length
        ("example.com", "/", "home"),
        ("example.com", "", "home"),
        ("example.com", "/index.html", "site"),
        ("example.com", "/api", "api"),
        ("example.com", "/api/", "api"),
        ("example.com", "/api/users/1", "api"),
        ("example.com", "/apix", "site"),
        ("example.com", "/api/health", "health"),
        ("example.com", "/api/health/", "api"),
        ("example.com", "/api/healthz", "api"),
        # raw path: slashes collapsed, nothing decoded
        ("example.com", "//api//users", "api"),
        ("example.com", "//", "home"),
        ("example.com", "/api%2Fusers", "site"),
        ("example.com", "/API/users", "site"),
        ("example.com", "*", "site"),
        # wildcards: exact host over wildcard, longer suffix over shorter
        ("admin.example.com", "/api/x", "admin"),
        ("www.example.com", "/", "tenant"),
        ("a.b.example.com", "/", "tenant"),
        ("x.eu.example.com", "/", "eu"),
        ("x.eu.example.com", "/api/1", "eu-api"),
        ("eu.example.com", "/api/1", "tenant"),
        # an exact host without a matching path falls through to wildcards
        ("api.example.com", "/v1/x", "v1"),
        ("api.example.com", "/v2/x", "tenant"),
        # no route
        ("example.org", "/", None),
        ("com", "/", None),
        ("localhost", "/", None),
        ("localhost", "/app", "local"),
        ("[::1]", "/anything", "v6"),
    ],
)
def test_table_match(table: RouteTable[str], host: str, path: str, expected: str | None) -> None:
    assert table.match(host, path) == expected


def test_table_uses_normalised_hosts_from_headers(table: RouteTable[str]) -> None:
    for header in ("Example.COM:8443", "example.com.", "EXAMPLE.com.:80"):
        host = normalise_host(header)
        assert host is not None
        assert table.match(host, "/x") == "site"
    v6 = normalise_host("[0:0:0::1]:8080")
    assert v6 is not None
    assert table.match(v6, "/") == "v6"


def test_table_is_routed_host_and_hosts(table: RouteTable[str]) -> None:
    assert table.is_routed_host("example.com")
    assert table.is_routed_host("deep.sub.example.com")
    assert table.is_routed_host("localhost")
    assert not table.is_routed_host("example.org")
    assert not table.is_routed_host("com")
    assert table.hosts() == {"example.com", "admin.example.com", "api.example.com", "[::1]", "localhost"}
    assert len(table) == len(TABLE_ROUTES)
    assert [p.normalised() for p, _ in table.entries()][:2] == ["example.com/*", "example.com/api/*"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", False),  # path rules on the host itself
        ("api.example.com", False),  # /v1/* there, the wildcard's catch-all for other paths
        ("x.eu.example.com", False),  # *.eu.example.com/api/*
        ("admin.example.com", True),  # admin.example.com/* only
        ("www.example.com", True),  # the catch-all of *.example.com
        ("eu.example.com", True),  # not under *.eu.example.com: *.example.com's catch-all
        ("[::1]", True),
        ("localhost", False),  # /app/* only: other paths have no route
        ("example.org", True),  # no route on any path
    ],
)
def test_table_same_for_every_path(table: RouteTable[str], host: str, expected: bool) -> None:
    assert table.same_for_every_path(host) is expected


def test_empty_table() -> None:
    table: RouteTable[str] = RouteTable([])
    assert table.match("example.com", "/") is None
    assert not table.is_routed_host("example.com")
    assert table.hosts() == set()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("example.com", "example.com/*"),
        ("Example.com", "example.com"),
        ("*.Example.com/a/*", "*.example.com/a/*"),
        ("example.com/x", "example.com/x"),
        ("[::1]", "[0::1]/*"),
    ],
)
def test_table_rejects_the_same_pattern_twice(first: str, second: str) -> None:
    with pytest.raises(RouteConflict) as info:
        RouteTable([(parse_route(first), "a"), (parse_route(second), "b")])
    assert parse_route(first).normalised() in str(info.value)
    assert info.value.pattern == parse_route(second)


def test_table_allows_overlapping_but_different_patterns() -> None:
    table = RouteTable(
        (parse_route(r), r)
        for r in ["example.com", "example.com/", "example.com/api/*", "example.com/api", "*.example.com"]
    )
    assert table.match("example.com", "/api") == "example.com/api"


# --- host normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com:443", "example.com"),
        ("example.com:", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:80", "example.com"),
        ("localhost:8080", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::1]:8080", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("", None),
        (":80", None),
        (".", None),
        ("example..com", None),
        ("example.com..", None),
        ("-example.com", None),
        ("exa_mple.com", None),
        ("example.com:http", None),
        ("example.com:123456", None),
        ("example.com:99999", None),
        ("example.com:65536", None),
        ("example.com:0", None),
        ("example.com:+80", None),
        ("example.com: 80", None),
        ("example.com:\u0668\u0660", None),  # ARABIC-INDIC digits: isdigit(), but not a port
        ("[::1]:99999", None),
        ("example.com:65535", "example.com"),
        ("example.com:80:80", None),
        ("user@example.com", None),
        ("example.com/path", None),
        ("exam ple.com", None),
        (" example.com", None),
        ("bücher.de", None),
        ("\u212a.com", None),  # KELVIN SIGN lowercases to ASCII 'k'
        ("[::1", None),
        ("[::1]x", None),
        ("[::1]:x", None),
        ("[nope]", None),
        ("::1", None),
        ("a" * 64 + ".com", None),
        (".".join(["a" * 60] * 5), None),
    ],
)
def test_normalise_host(header: str, expected: str | None) -> None:
    assert normalise_host(header) == expected


# --- conflicts between apps -----------------------------------------------------------------------------


def test_find_conflicts_only_for_identical_normalised_patterns() -> None:
    existing = {
        "web": ["example.com", "www.example.com/*"],
        "api": ["example.com/api/*"],
        "blog": ["*.example.com"],
    }
    assert find_conflicts("docs", ["example.com/docs/*", "example.com/api", "a.example.com"], existing) == []
    conflicts = find_conflicts("new", ["Example.com/*", "*.EXAMPLE.com", "other.org"], existing)
    assert conflicts == [
        Conflict(app="new", route="Example.com/*", other_app="web", other_route="example.com"),
        Conflict(app="new", route="*.EXAMPLE.com", other_app="blog", other_route="*.example.com"),
    ]
    assert "already used by app 'web'" in conflicts[0].describe()


def test_find_conflicts_ignores_the_apps_own_routes() -> None:
    existing = {"web": ["example.com"], "api": ["example.com/api/*"]}
    assert find_conflicts("web", ["example.com", "example.com/api/v2/*"], existing) == []
    assert find_conflicts("api", ["example.com/api/*"], existing) == []


def test_find_conflicts_reports_every_other_app() -> None:
    existing = {"b": ["x.com"], "a": ["x.com/*"]}
    assert [c.other_app for c in find_conflicts("c", ["x.com"], existing)] == ["a", "b"]


def test_find_conflicts_rejects_invalid_new_routes_and_tolerates_odd_stored_ones() -> None:
    with pytest.raises(RouteError):
        find_conflicts("new", ["https://x.com"], {})
    existing = {"old": ["X.com:80", "y.com"]}
    assert [c.other_route for c in find_conflicts("new", ["y.com"], existing)] == ["y.com"]
