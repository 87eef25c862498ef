"""The last minute's figures per app for `tako status`: requests/s, error rate (5xx share) and p95 latency.

The server keeps a short ring of traffic snapshots, one every SAMPLE_EVERY seconds; a figure is the
difference between the snapshot now and the newest one at least WINDOW old (the oldest kept, while the
server is younger than that). p95 is interpolated inside the histogram bucket it falls in, as
Prometheus' `histogram_quantile` does, so it is as precise as the buckets are.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tako.server.observe.traffic import LATENCY_BUCKETS, AppTraffic, TrafficSnapshot

WINDOW = 60.0
SAMPLE_EVERY = 5.0


@dataclass(frozen=True)
class Figures:
    window_seconds: float  # what the figures cover: WINDOW, or less on a server younger than that
    requests: int
    requests_per_second: float
    error_rate: float | None  # share of 5xx answers; None without requests
    p95_seconds: float | None  # None without requests


class LiveFigures:
    def __init__(
        self, traffic: Callable[[], TrafficSnapshot], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._traffic = traffic
        self._clock = clock
        self._ring: deque[tuple[float, TrafficSnapshot]] = deque(maxlen=int(WINDOW / SAMPLE_EVERY) + 2)
        self.sample()

    def sample(self) -> None:
        self._ring.append((self._clock(), self._traffic()))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self.sample()

    def for_app(self, name: str) -> dict[str, float | int | None]:
        """The app's figures over the last minute, as the Status reply carries them."""
        now = self._clock()
        since, base = self._ring[0]
        for at, snapshot in self._ring:
            if now - at >= WINDOW:
                since, base = at, snapshot
        current = self._traffic().apps.get(name)
        return asdict(figures(current, base.apps.get(name), now - since))


def figures(current: AppTraffic | None, base: AppTraffic | None, seconds: float) -> Figures:
    """What happened between `base` and `current` (cumulative figures of one app) over `seconds`."""
    buckets = _delta_buckets(current, base)
    total = sum(buckets)
    errors = _requests(current, "5xx") - _requests(base, "5xx")
    return Figures(
        window_seconds=round(seconds, 1),
        requests=total,
        requests_per_second=total / max(seconds, 1.0),
        error_rate=errors / total if total else None,
        p95_seconds=quantile(0.95, buckets) if total else None,
    )


def _requests(traffic: AppTraffic | None, status_class: str) -> int:
    return traffic.requests.get(status_class, 0) if traffic is not None else 0


def _delta_buckets(current: AppTraffic | None, base: AppTraffic | None) -> list[int]:
    now = current.latency_buckets if current is not None else (0,) * (len(LATENCY_BUCKETS) + 1)
    then = base.latency_buckets if base is not None else (0,) * len(now)
    return [a - b for a, b in zip(now, then, strict=True)]


def quantile(q: float, buckets: list[int]) -> float:
    """The q-quantile of per-bucket counts (LATENCY_BUCKETS, then +Inf), linear inside its bucket; the
    highest finite bound when it falls in +Inf."""
    rank = q * sum(buckets)
    seen = 0
    lower = 0.0
    for upper, n in zip(LATENCY_BUCKETS, buckets, strict=False):
        if n and seen + n >= rank:
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        lower = upper
    return LATENCY_BUCKETS[-1]
