"""A data-plane worker's view of an instance (`WorkerUpstream`, on the compiled `counters.InFlight`) and the
round robin over an app's instances (`counters.Rotation`) that both the workers' and the main process's gates
pick with."""

from __future__ import annotations

from typing import cast

from tako.server.apps.app import ManagedApp
from tako.server.proxy.counters import Activity, InFlight, Rotation
from tako.server.workers.child import DataPlaneChild, WorkerGate, WorkerUpstream


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


def test_a_rotation_goes_round_and_skips_to_the_less_busy_neighbour() -> None:
    a, b, c = (WorkerUpstream(key, "127.0.0.1", 8000 + n) for n, key in enumerate("abc"))
    gate = WorkerGate("app", cast(DataPlaneChild, None))  # a Rotation; its child is not asked here
    assert gate.pick() is None
    gate.rotation = (a,)
    assert [gate.pick() for _ in range(3)] == [a, a, a]
    gate.rotation = (a, b, c)
    order = []
    for _ in range(6):
        chosen = gate.pick()
        assert chosen is not None
        order.append(chosen.key)
    assert order == ["b", "c", "a", "b", "c", "a"]
    b.request_started()  # b is busy, c idle: c is taken in b's turn
    assert gate.pick() is c
    assert gate.pick() is c  # c's own turn
    c.request_started()
    c.request_started()  # c busier than b: b keeps its turn
    gate.pick()  # a's turn
    assert gate.pick() is b


def test_the_main_process_gate_is_a_rotation_too() -> None:
    assert issubclass(ManagedApp, Rotation) and issubclass(WorkerGate, Rotation)


def test_an_instance_count_goes_into_its_apps_activity_and_reports_idle_only_when_asked() -> None:
    """The main process's instances count in flight through the same compiled class, into their app's
    `Activity` (idle scaling reads it); `idle` runs only while `report_idle` is set (an instance draining)."""
    idles: list[int] = []

    class Draining(InFlight):
        def idle(self) -> None:
            idles.append(self.inflight)

    activity = Activity()
    a, b = Draining(activity), Draining(activity)
    a.request_started()
    b.request_started()
    assert (a.inflight, b.inflight, activity.inflight) == (1, 1, 2)
    a.request_answered()
    assert (a.inflight, a.answered, activity.inflight, idles) == (0, 1, 1, [])  # not asked: no call
    b.report_idle = True
    before = activity.last
    b.request_finished()
    assert (b.inflight, b.answered, activity.inflight, idles) == (0, 0, 0, [0])
    assert activity.last >= before  # the app went idle now: its clock was read
    b.request_finished()  # an extra finish never counts below zero
    assert b.inflight == 0
