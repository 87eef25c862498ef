"""Where a scrape (and `tako status`'s figures) read tako-server's state: one callable per source."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tako.server.apps.app import ManagedApp
from tako.server.apps.events import AppEvents
from tako.server.observe.traffic import TrafficSnapshot


@dataclass(frozen=True)
class MetricsSources:
    """Where a scrape reads its figures; each is called once per scrape."""

    traffic: Callable[[], TrafficSnapshot]
    apps: Callable[[], Iterable[ManagedApp]]
    events: Callable[[], Mapping[str, AppEvents]]
    certificates: Callable[[], Mapping[str, Mapping[str, Any]]] = dict  # host -> {"not_after": ISO 8601}
    workers: Callable[[], list[dict[str, Any]]] = list  # data-plane workers beside the main process
