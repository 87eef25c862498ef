"""One tako-server's metrics: the `/metrics` listener (when `[metrics] listen` names an address) and the
live figures `tako status` shows, both read from the same sources."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import logging
from typing import TYPE_CHECKING

from tako.config.server import MetricsSettings
from tako.errors import TakoError
from tako.server.observe.live_figures import LiveFigures
from tako.server.observe.metrics_sources import MetricsSources

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from tako.server.observe.metrics_listener import MetricsListener

log = logging.getLogger("tako.server.metrics")


class MetricsService:
    def __init__(self, settings: MetricsSettings, sources: MetricsSources) -> None:
        self.settings = settings
        self.sources = sources
        self.figures = LiveFigures(sources.traffic)
        self.listener: MetricsListener | None = None
        self.port: int | None = None  # the listener's port, None when it is off
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sampler = asyncio.create_task(self.figures.run(), name="live-figures")
        address = self.settings.address
        if address is None:
            return
        # Looked for, not imported: `tako servers upgrade` installs tako without its dependencies, so a
        # server upgraded from a version before metrics may lack prometheus_client; it serves all the same.
        # Importing it (60-80 ms) is left to the first scrape, off the event loop: at start-up it held
        # the loop, so the first requests after a restart, before the listener's first answer.
        if importlib.util.find_spec("prometheus_client") is None:
            log.warning(
                "metrics listener off: no module named 'prometheus_client'; re-run scripts/install-server "
                "(tako-server's dependencies)"
            )
            return
        from tako.server.observe import metrics_listener

        listener = metrics_listener.MetricsListener(lambda: _collect(self.sources))
        try:
            self.port = await listener.start(*address)
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            raise TakoError(
                f"cannot listen for metrics on {self.settings.listen}: "
                + ("the port is already in use" if in_use else str(exc.strerror or exc)),
                hint='set [metrics] listen in server-config.toml to a free HOST:PORT, or "" to turn it off',
            ) from None
        self.listener = listener

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.listener is not None:
            await self.listener.close()


def _collect(sources: MetricsSources) -> list[Metric]:
    from tako.server.observe import metrics  # imported by the listener before its first collect

    return metrics.collect(sources)
