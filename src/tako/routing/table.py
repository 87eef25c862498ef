"""RouteTable: an immutable, precomputed index from route patterns to values, matched once per request.

Lookups are dict hits on the host (then on each wildcard suffix, longest first) and on the path and its
segment prefixes (longest first); no regex and no scan over all routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from tako.routing.patterns import RoutePattern, match_path

T = TypeVar("T")


class RouteConflict(ValueError):
    """Two entries of one RouteTable claim the same normalised pattern."""

    def __init__(self, pattern: RoutePattern) -> None:
        self.pattern = pattern
        super().__init__(f"route {pattern.normalised()!r} is claimed twice; each route may be used only once")


class _PathRules(Generic[T]):
    """The path rules of one host (or one wildcard suffix)."""

    __slots__ = ("_has_catch_all", "catch_all", "exact", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.prefixes: dict[str, T] = {}  # "/api" for "/api/*"; never "/"
        self.catch_all: T | None = None
        # Separate flag: T itself may admit None, so `catch_all is None` cannot mean "no catch-all".
        self._has_catch_all = False

    def add(self, pattern: RoutePattern, value: T) -> bool:
        """Add a rule; False if this host already has the same path rule."""
        if pattern.prefix and pattern.path == "/":
            if self._has_catch_all:
                return False
            self.catch_all = value
            self._has_catch_all = True
            return True
        rules = self.prefixes if pattern.prefix else self.exact
        if pattern.path in rules:
            return False
        rules[pattern.path] = value
        return True

    def catch_all_set(self) -> bool:
        return self._has_catch_all

    def match(self, path: str) -> tuple[bool, T | None]:
        # An exact rule that matches equals the whole path, so it is at least as long as any matching
        # prefix rule and wins the tie: check it first.
        exact = self.exact
        if exact and path in exact:
            return True, exact[path]
        prefixes = self.prefixes
        if prefixes:
            candidate = path
            while True:
                if candidate in prefixes:
                    return True, prefixes[candidate]
                cut = candidate.rfind("/")
                if cut <= 0:
                    break
                candidate = candidate[:cut]
        return self._has_catch_all, self.catch_all


class RouteTable(Generic[T]):
    """Maps (host, path) to the value of the most specific matching pattern. Immutable after creation."""

    __slots__ = ("_entries", "_exact", "_wildcard")

    def __init__(self, entries: Iterable[tuple[RoutePattern, T]]) -> None:
        self._entries: list[tuple[RoutePattern, T]] = []
        self._exact: dict[str, _PathRules[T]] = {}
        self._wildcard: dict[str, _PathRules[T]] = {}
        for pattern, value in entries:
            index = self._wildcard if pattern.wildcard else self._exact
            rules = index.get(pattern.host)
            if rules is None:
                rules = index[pattern.host] = _PathRules()
            if not rules.add(pattern, value):
                raise RouteConflict(pattern)
            self._entries.append((pattern, value))

    def match(self, host: str, path: str) -> T | None:
        """The value of the most specific pattern matching `host` (from `normalise_host`) and the raw
        request path (query removed), or None if no route matches."""
        if not path or "//" in path:
            path = match_path(path)
        rules = self._exact.get(host)
        if rules is not None:
            found, value = rules.match(path)
            if found:
                return value
        wildcard = self._wildcard
        if wildcard:
            dot = host.find(".")
            while dot >= 0:
                rules = wildcard.get(host[dot + 1 :])
                if rules is not None:
                    found, value = rules.match(path)
                    if found:
                        return value
                dot = host.find(".", dot + 1)
        return None

    def same_for_every_path(self, host: str) -> bool:
        """Whether `match(host, path)` is the same for every path: the rules it reads for this host (the
        exact host's, then each wildcard suffix's, up to the first catch-all) have no path rules."""
        labels = host.split(".")
        # The rules `match` reads, in its order: the exact host's, then each wildcard suffix's, longest first.
        in_order = [self._exact.get(host)] + [
            self._wildcard.get(".".join(labels[i:])) for i in range(1, len(labels))
        ]
        for rules in in_order:
            if rules is not None:
                if rules.exact or rules.prefixes:
                    return False
                if rules.catch_all_set():
                    return True
        return True  # no route for this host on any path

    def is_routed_host(self, host: str) -> bool:
        """Whether any route (on any path) is for this normalised host."""
        if host in self._exact:
            return True
        dot = host.find(".")
        while dot >= 0:
            if host[dot + 1 :] in self._wildcard:
                return True
            dot = host.find(".", dot + 1)
        return False

    def hosts(self) -> set[str]:
        """The exact (non-wildcard) hosts, e.g. for ACME. IP literals are included; callers filter."""
        return set(self._exact)

    def entries(self) -> list[tuple[RoutePattern, T]]:
        """The entries in the order given."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
