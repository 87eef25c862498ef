"""Route conflicts between apps: two apps conflict only when they claim the same normalised pattern."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tako.routing.patterns import RouteError, parse_route


@dataclass(frozen=True)
class Conflict:
    """`app` wants `route`, which `other_app` already serves as `other_route` (texts as written)."""

    app: str
    route: str
    other_app: str
    other_route: str

    def describe(self) -> str:
        same = "" if self.route == self.other_route else f" (as {self.other_route!r})"
        return f"route {self.route!r} of app {self.app!r} is already used by app {self.other_app!r}{same}"


def _key(text: str) -> str:
    try:
        return parse_route(text).normalised()
    except RouteError:
        # A stored route that no longer parses can still collide textually; compare it as written.
        return text.strip().lower()


def find_conflicts(
    new_app: str, new_routes: Iterable[str], existing: Mapping[str, Iterable[str]]
) -> list[Conflict]:
    """Conflicts between `new_app`'s routes and every other app's routes in `existing` (app -> routes).

    The new app's own entry in `existing` (its previous routes) is ignored. New routes are parsed and a
    RouteError is raised for an invalid one. Order: by new route as given, then by other app name.
    """
    claimed: dict[str, list[tuple[str, str]]] = {}
    for app in sorted(existing):
        if app == new_app:
            continue
        for route in existing[app]:
            claimed.setdefault(_key(route), []).append((app, route))
    conflicts: list[Conflict] = []
    for route in new_routes:
        key = parse_route(route).normalised()
        for other_app, other_route in claimed.get(key, ()):
            conflicts.append(Conflict(new_app, route, other_app, other_route))
    return conflicts
