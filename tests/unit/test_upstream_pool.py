"""The upstream pool's idle sweep: stale connections closed oldest first, a few per sweep."""

from __future__ import annotations

from typing import Any

from tako.server.proxy.upstream import POOL_IDLE_SECONDS, SWEEP_CLOSE_MAX, UpstreamConnection, UpstreamPool


class _Transport:
    """Records close(), all the pool's use of a connection's transport."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _pool() -> UpstreamPool:
    loop: Any = None  # the pool never uses its loop for idle connections
    return UpstreamPool("app/1", "127.0.0.1", 8000, loop)


def _connections(pool: UpstreamPool, n: int) -> list[UpstreamConnection]:
    conns = []
    for _ in range(n):
        conn = UpstreamConnection(pool)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        conns.append(conn)
    return conns


def _release(pool: UpstreamPool, conns: list[UpstreamConnection], at: float = 0.0) -> None:
    """Release each connection, as if at time `at` (the sweep compares these stamps with its `now`)."""
    for conn in conns:
        pool.release(conn)
        if not conn.closed:
            conn.idle_since = at


def test_sweep_closes_stale_connections_a_few_per_sweep_oldest_first() -> None:
    # Closing thousands of connections in one loop turn stalls every request in flight; a burst's
    # leftovers go over several sweeps instead.
    pool = _pool()
    old = _connections(pool, 2 * SWEEP_CLOSE_MAX + 10)
    _release(pool, old, at=0.0)
    recent = _connections(pool, 5)
    _release(pool, recent, at=1.0)

    sweep_at = POOL_IDLE_SECONDS + 0.5  # the first batch is stale, the second is not
    pool.sweep(sweep_at)
    assert [c.closed for c in old] == [True] * SWEEP_CLOSE_MAX + [False] * (SWEEP_CLOSE_MAX + 10)
    pool.sweep(sweep_at)
    pool.sweep(sweep_at)
    assert all(c.closed for c in old)
    assert not any(c.closed for c in recent)
    assert pool.acquire() is recent[-1]  # LIFO: the most recently used connection is reused first
    assert len(pool.idle) == len(recent) - 1


def test_a_pool_keeps_every_connection_a_burst_released() -> None:
    # The count cap is far above any burst; the sweep is what bounds a pool.
    pool = _pool()
    burst = _connections(pool, 5000)
    _release(pool, burst)
    assert len(pool.idle) == 5000
    assert not any(c.closed for c in burst)


def test_release_takes_back_only_connections_in_step_with_the_app() -> None:
    # A connection whose last request was not sent whole (a body announced but not all sent) would have
    # the next request read by the app as the rest of that body: it is closed, never pooled.
    pool = _pool()
    short, whole = _connections(pool, 2)
    short.request_complete = False
    _release(pool, [short, whole])
    assert (short.closed, whole.closed) == (True, False)
    assert pool.acquire() is whole
    assert pool.acquire() is None
