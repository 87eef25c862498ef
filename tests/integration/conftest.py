"""Async tests marked `uvloop` (the proxy's) run on uvloop, the loop tako-server runs, within a deadline.

The deadline is a guard against a hung test, not a measure of speed: 120 s unless the test is marked
`deadline(seconds)`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import pytest
import uvloop

DEFAULT_DEADLINE = 120.0

AsyncTest = Callable[..., Coroutine[Any, Any, None]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uvloop: run the async test on uvloop, within its deadline")
    config.addinivalue_line(
        "markers", f"deadline(seconds): bound a uvloop test ({DEFAULT_DEADLINE:g} s unless set)"
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop for the marked tests; every other async test keeps asyncio's own loop."""
    del config
    if item.get_closest_marker("uvloop") is not None:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("uvloop") is None:
            continue
        if inspect.iscoroutinefunction(item.obj):
            marker = item.get_closest_marker("deadline")
            item.obj = _within(item.obj, float(marker.args[0]) if marker else DEFAULT_DEADLINE)


def _within(test: AsyncTest, seconds: float) -> AsyncTest:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(seconds):
            await test(*args, **kwargs)

    return bounded
