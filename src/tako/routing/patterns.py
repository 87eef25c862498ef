"""Route patterns: parse and normalise route text, order patterns by specificity, match one request.

Also `normalise_host`, which turns a Host header or SNI name into the form that patterns and tables compare.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

ACCEPTED_FORMS = (
    "accepted forms: example.com, *.example.com (one or more labels), "
    "example.com/exact/path, example.com/prefix/* (also with *.example.com)"
)

# One DNS label: letters, digits and hyphens, 1-63 characters, no hyphen at either end (RFC 1123).
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A whole lowercase hostname without trailing dot; used on the per-request path, so one compiled regex.
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# Characters a route path may contain: RFC 3986 unreserved, sub-delims, ':' and '@'. No '%' (request
# paths are never percent-decoded, so an encoded route could only ever match one spelling), no '?' or '#'.
_PATH_CHARS_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=:@/]*")
_MAX_HOST_LEN = 253


class RouteError(ValueError):
    """A route text is not a valid route. `str()` says what is wrong and shows the accepted forms."""

    def __init__(self, route: str, problem: str) -> None:
        self.route = route
        self.problem = problem
        super().__init__(f"invalid route {route!r}: {problem}; {ACCEPTED_FORMS}")


@dataclass(frozen=True)
class RoutePattern:
    """One parsed route.

    `host` is lowercase; for a wildcard route it is the part after `*.`. `path` is `/` for the catch-all;
    a prefix route `/api/*` is stored as path `/api` with `prefix=True`.
    """

    host: str
    wildcard: bool
    path: str
    prefix: bool

    def normalised(self) -> str:
        """Canonical text: `example.com/*`, `*.example.com/api/*`, `example.com/exact`."""
        host = f"*.{self.host}" if self.wildcard else self.host
        if self.prefix:
            return f"{host}/*" if self.path == "/" else f"{host}{self.path}/*"
        return f"{host}{self.path}"

    def __str__(self) -> str:
        return self.normalised()

    def specificity(self) -> tuple[bool, int, int, bool]:
        """Sort key, larger is more specific.

        Exact host over wildcard, then longer wildcard suffix, then longer path, then exact path over
        prefix. Two different patterns that match the same request never have the same key.
        """
        return (not self.wildcard, len(self.host), len(self.path), not self.prefix)

    def matches_host(self, host: str) -> bool:
        """Whether this pattern's host part matches a normalised host."""
        if self.wildcard:
            return len(host) > len(self.host) + 1 and host.endswith("." + self.host)
        return host == self.host

    def matches_path(self, path: str) -> bool:
        """Whether this pattern's path part matches a raw request path (see `match_path`)."""
        return _path_matches(self.path, self.prefix, match_path(path))

    def matches(self, host: str, path: str) -> bool:
        """Whether a request for `host` (already normalised) and raw `path` matches this pattern."""
        return self.matches_host(host) and self.matches_path(path)


def _path_matches(rule_path: str, prefix: bool, path: str) -> bool:
    if not prefix:
        return path == rule_path
    if rule_path == "/":
        return True
    return path == rule_path or path.startswith(rule_path + "/")


def match_path(path: str) -> str:
    """The form of a raw request path that routing compares: runs of `/` collapsed into one.

    Nothing is percent-decoded (`/api%2Fx` is one segment and does not match `/api/*`), and dot segments
    are not resolved. An empty path is `/`.
    """
    if not path:
        return "/"
    while "//" in path:
        path = path.replace("//", "/")
    return path


def parse_route(text: str) -> RoutePattern:
    """Parse one route text into a pattern. Raises RouteError saying what is wrong."""
    if not isinstance(text, str):
        raise RouteError(repr(text), f"a route must be a string, not {type(text).__name__}")
    if not text or text.isspace():
        raise RouteError(text, "the route is empty")
    if any(c.isspace() for c in text):
        raise RouteError(text, "a route must not contain whitespace")
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise RouteError(
            text,
            f"remove the scheme {scheme + '://'!r}; Tako serves every route on HTTP and HTTPS",
        )
    if text.startswith("/"):
        raise RouteError(text, "a route needs a host before the path (path-only routes are not allowed)")
    for bad, what in (("?", "a query string"), ("#", "a fragment")):
        if bad in text:
            raise RouteError(text, f"a route must not contain {what} ({bad!r})")

    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RouteError(text, "an IPv6 address must be closed with ']'")
        host_text, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith("/"):
            if rest.startswith(":"):
                raise RouteError(text, "remove the port; a route matches the host on any port")
            raise RouteError(text, f"unexpected {rest!r} after the IPv6 address")
        host = _parse_ipv6_literal(text, host_text)
        wildcard = False
        path_text = rest
    else:
        slash = text.find("/")
        host_text, path_text = (text, "") if slash < 0 else (text[:slash], text[slash:])
        host, wildcard = _parse_host(text, host_text)

    path, prefix = _parse_path(text, path_text)
    return RoutePattern(host=host, wildcard=wildcard, path=path, prefix=prefix)


def _parse_ipv6_literal(text: str, host_text: str) -> str:
    try:
        address = ipaddress.IPv6Address(host_text[1:-1])
    except ValueError:
        raise RouteError(text, f"{host_text} is not a valid IPv6 address") from None
    return f"[{address.compressed}]"


def _parse_host(text: str, host_text: str) -> tuple[str, bool]:
    if not host_text:
        raise RouteError(text, "the host is empty")
    if host_text.count(":") > 1:
        raise RouteError(text, "write an IPv6 address in brackets, as in [2001:db8::1]")
    if ":" in host_text:
        port = host_text.rsplit(":", 1)[1]
        if port.isascii() and port.isdigit():
            raise RouteError(text, f"remove the port ':{port}'; a route matches the host on any port")
        raise RouteError(text, "a host must not contain ':'")
    if "@" in host_text:
        raise RouteError(text, "a host must not contain '@'")
    if not host_text.isascii():
        raise RouteError(
            text, "the host has non-ASCII characters; write internationalised names in punycode (xn--...)"
        )
    if host_text == "*":
        raise RouteError(text, "a bare '*' is not a route; name the domain, as in *.example.com")
    host = host_text.lower()
    wildcard = False
    if host.startswith("*."):
        wildcard = True
        host = host[2:]
    if "*" in host:
        raise RouteError(text, "a wildcard must be the whole first label, as in *.example.com")
    if host.endswith(".") and not host.endswith(".."):
        # A fully qualified name with the root dot means the same host; Host headers are compared without it.
        host = host[:-1]
    if not host:
        raise RouteError(text, "a wildcard needs a domain after '*.'" if wildcard else "the host is empty")
    if len(host) > _MAX_HOST_LEN:
        raise RouteError(text, f"the host is longer than {_MAX_HOST_LEN} characters")
    for label in host.split("."):
        if not label:
            raise RouteError(text, "the host has an empty label ('..' or a leading '.')")
        if len(label) > 63:
            raise RouteError(text, f"the host label {label[:20]!r}... is longer than 63 characters")
        if not _LABEL_RE.fullmatch(label):
            raise RouteError(
                text,
                f"the host label {label!r} is invalid; labels use letters, digits and '-', "
                "and do not start or end with '-'",
            )
    return host, wildcard


def _parse_path(text: str, path_text: str) -> tuple[str, bool]:
    if path_text in ("", "/*"):
        return "/", True
    if "//" in path_text:
        raise RouteError(text, "the path has an empty segment ('//')")
    prefix = False
    path = path_text
    if path.endswith("/*"):
        prefix = True
        path = path[:-2]
    if "*" in path:
        raise RouteError(text, "'*' is only allowed as the last path segment, as in example.com/api/*")
    if "%" in path:
        raise RouteError(text, "a route path must not contain '%' escapes; write the characters themselves")
    if not _PATH_CHARS_RE.fullmatch(path):
        bad = next(c for c in path if not _PATH_CHARS_RE.fullmatch(c))
        raise RouteError(text, f"the path contains the character {bad!r}, which is not allowed")
    segments = path.split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        raise RouteError(text, "the path must not contain '.' or '..' segments")
    return path, prefix


def parse_routes(texts: Iterable[str]) -> list[RoutePattern]:
    """Parse the routes of one app, rejecting two texts that mean the same pattern."""
    seen: dict[RoutePattern, str] = {}
    patterns: list[RoutePattern] = []
    for text in texts:
        pattern = parse_route(text)
        if pattern in seen:
            raise RouteError(
                text,
                f"it is the same route as {seen[pattern]!r} (both mean {pattern.normalised()!r}); "
                "list it once",
            )
        seen[pattern] = text
        patterns.append(pattern)
    return patterns


def normalise_host(host_header: str) -> str | None:
    """Normalise a Host header or SNI name: drop the port, lowercase, drop one trailing dot.

    IPv6 literals keep their brackets and are compressed: `[0:0::1]:8080` -> `[::1]`.
    Returns None for an empty or malformed host. Pure, so callers on the hot path may cache results.
    """
    if not host_header:
        return None
    if host_header[0] == "[":
        end = host_header.find("]")
        if end < 0:
            return None
        rest = host_header[end + 1 :]
        if rest and not _is_port_suffix(rest):
            return None
        try:
            address = ipaddress.IPv6Address(host_header[1:end])
        except ValueError:
            return None
        return f"[{address.compressed}]"
    colon = host_header.find(":")
    if colon >= 0:
        if not _is_port_suffix(host_header[colon:]):
            return None
        host_header = host_header[:colon]
    if not host_header.isascii():
        # Checked before lower(): some non-ASCII letters lowercase to ASCII ones (KELVIN SIGN -> 'k').
        return None
    host = host_header.lower()
    if host.endswith("."):
        host = host[:-1]
    if len(host) > _MAX_HOST_LEN or not _HOST_RE.fullmatch(host):
        return None
    return host


def _is_port_suffix(text: str) -> bool:
    # ":" alone is allowed by RFC 3986 (empty port); otherwise ASCII digits naming a port in 1-65535.
    digits = text[1:]
    if text[0] != ":":
        return False
    if not digits:
        return True
    return len(digits) <= 5 and digits.isascii() and digits.isdigit() and 0 < int(digits) <= 65535
