"""A loop in a background thread for the length of a `with` block, stopped and joined when it ends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def looping(loop: Callable[[], None], stop: threading.Event, name: str) -> Iterator[None]:
    """Run `loop` (which returns once `stop` is set) in a daemon thread during the block; then set `stop`
    and join the thread, for 30 s at most."""
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
