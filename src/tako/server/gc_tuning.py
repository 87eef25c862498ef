"""What the cyclic garbage collector looks at in a serving data-plane process.

Once a process serves, what it made while starting (modules, classes, settings, routes, certificates) lives
as long as it does, yet every full collection walked all of it again. `freeze_startup_objects` moves
those objects to the collector's permanent generation (`gc.freeze`), so collections under load walk only
what serving made: connections, requests, their buffers. Objects freed by reference counting are freed as
before; only a reference cycle among frozen objects would stay. No collection runs first: a full one
would hold the event loop for tens of milliseconds just as the first requests after a restart arrive,
and the little garbage start-up leaves is not worth that.
Measured at 5000 connections through a testbed host: docs/benchmarks.md, "Garbage collection under load".
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Freeze what is alive now (called once the process serves; constant time)."""
    gc.freeze()
