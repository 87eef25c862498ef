"""Route patterns shared by the CLI and tako-server: parse, normalise, specificity, match, conflicts.

Pure code, no I/O. See docs/routes.md for the syntax and precedence rules users see.
"""

from tako.routing.conflicts import Conflict, find_conflicts
from tako.routing.patterns import (
    ACCEPTED_FORMS,
    RouteError,
    RoutePattern,
    match_path,
    normalise_host,
    parse_route,
    parse_routes,
)
from tako.routing.table import RouteConflict, RouteTable

__all__ = [
    "ACCEPTED_FORMS",
    "Conflict",
    "RouteConflict",
    "RouteError",
    "RoutePattern",
    "RouteTable",
    "find_conflicts",
    "match_path",
    "normalise_host",
    "parse_route",
    "parse_routes",
]
