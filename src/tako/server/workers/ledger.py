"""What one data-plane worker may still be using, folded into the instances' in-flight counts.

A worker reports per-instance counters (in flight, started, answered) and the routing snapshot it applied.
The main process adds its in-flight requests to the instances' own counts, so draining and idle scale-down
wait for them, and its answers to theirs, which health checks read as a sign of life. An instance leaving
rotation stays "pinned" (one in-flight request held for the worker) until the worker acknowledges a
snapshot without it: a request it picked just before that snapshot arrived is then reported before the pin
goes, so a drain never stops an instance the worker still uses.
"""

from __future__ import annotations

from collections.abc import Mapping

from tako.server.apps.instance import Instance
from tako.server.workers.messages import Counters, Report


class InflightLedger:
    """The main process's account of one worker. Reset (`release`) when the worker is gone."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # in-flight requests it reported, added to the instances
        self.starts: dict[str, int] = {}
        self.answered: dict[str, int] = {}  # requests it reported answered by each instance (cumulative)
        # Instances it may still pick: those of every snapshot sent but not yet acknowledged.
        self.possible: dict[str, Instance] = {}
        self.sent: dict[int, dict[str, Instance]] = {}
        self.pins: list[tuple[int, list[Instance]]] = []
        self.acked = -1

    def snapshot_sent(self, version: int, rotation: dict[str, Instance]) -> None:
        """Snapshot `version` with this rotation goes to the worker: pin what leaves its reach."""
        removed = [inst for key, inst in self.possible.items() if key not in rotation]
        for inst in removed:
            inst.request_started()
        self.pins.append((version, removed))
        self.sent[version] = rotation
        self.possible.update(rotation)

    def apply(self, report: Report, instances: Mapping[str, Instance]) -> None:
        # Counts first, then the pins the acknowledged version releases: never a moment at zero too early.
        for key, counters in report.counters.items():
            self._fold(key, counters, instances.get(key))
        if report.version > self.acked:
            self._acknowledge(report.version)

    def _fold(self, key: str, counters: Counters, inst: Instance | None) -> None:
        inflight = counters.inflight
        delta = inflight - self.counts.get(key, 0)
        if inflight:
            self.counts[key] = inflight
        else:
            self.counts.pop(key, None)
        active = counters.starts != self.starts.get(key, 0)
        self.starts[key] = counters.starts
        previous = self.answered.get(key, 0)
        # Fewer than last time: the worker dropped the instance's counters (idle, out of every rotation)
        # and counts again from 0 since it came back.
        answered = counters.answered - previous if counters.answered >= previous else counters.answered
        self.answered[key] = counters.answered
        if inst is None:
            if not inflight:
                self.starts.pop(key, None)  # an instance gone for good
                self.answered.pop(key, None)
            return
        if answered > 0:
            inst.answered += answered
        for _ in range(delta):
            inst.request_started()
        for _ in range(-delta):
            inst.request_finished()
        if active and delta == 0:
            inst.request_started()  # requests came and went within the batch: still activity
            inst.request_finished()

    def _acknowledge(self, version: int) -> None:
        self.acked = version
        keep = []
        for pinned_version, pinned in self.pins:
            if pinned_version <= version:
                for inst in pinned:
                    inst.request_finished()
            else:
                keep.append((pinned_version, pinned))
        self.pins = keep
        current = self.sent.get(version, {})
        for v in [v for v in self.sent if v <= version]:
            del self.sent[v]
        possible = dict(current)
        for later in self.sent.values():
            possible.update(later)
        self.possible = possible

    def release(self, instances: Mapping[str, Instance]) -> None:
        """The worker is gone: whatever it held is over."""
        for key, count in self.counts.items():
            inst = instances.get(key)
            if inst is not None:
                for _ in range(count):
                    inst.request_finished()
        for _, pinned in self.pins:
            for inst in pinned:
                inst.request_finished()
        self.counts.clear()
        self.starts.clear()
        self.answered.clear()
        self.pins.clear()
        self.sent.clear()
        self.possible.clear()
        self.acked = -1
