"""A data-plane worker's view of an instance (`WorkerUpstream`, on the compiled `counters.InFlight`) and the
round robin over an app's instances (`counters.pick_next`) that both the workers and the main process use."""

from __future__ import annotations

from tako.server.proxy.counters import InFlight, pick_next
from tako.server.workers.child import WorkerUpstream


def test_a_worker_upstream_counts_its_requests_in_flight_and_started() -> None:
    up = WorkerUpstream("a1b2c3d4", "127.0.0.1", 8001)
    assert isinstance(up, InFlight) and (up.key, up.host, up.port) == ("a1b2c3d4", "127.0.0.1", 8001)
    for _ in range(3):
        up.request_started()
    up.request_finished()
    assert (up.inflight, up.starts) == (2, 3)
    up.error_pages = {502: b"<p>down</p>"}  # set with each snapshot
    up.reported = (up.inflight, up.starts)
    assert up.reported == (2, 3)


def test_pick_next_goes_round_and_skips_to_the_less_busy_neighbour() -> None:
    a, b, c = (WorkerUpstream(key, "127.0.0.1", 8000 + n) for n, key in enumerate("abc"))
    assert pick_next((), 0) == (0, None)
    assert pick_next((a,), 5) == (5, a)
    last, order = 0, []
    for _ in range(6):
        last, chosen = pick_next((a, b, c), last)
        assert chosen is not None
        order.append(chosen.key)
    assert order == ["b", "c", "a", "b", "c", "a"]
    b.request_started()  # b is busy, c idle: c is taken in b's turn
    assert pick_next((a, b, c), 0) == (1, c)
    c.request_started()
    c.request_started()  # c busier than b: b keeps its turn
    assert pick_next((a, b, c), 0) == (1, b)
