"""The main process's account of a data-plane worker: its in-flight requests count on the instances, an
instance that leaves rotation stays busy until the worker acknowledges a snapshot without it, and a worker
that is gone holds nothing. Real instances (never started: only their counters are used)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_apps_gate import make_app

from tako.server.apps.instance import Instance
from tako.server.workers.ledger import InflightLedger
from tako.server.workers.messages import Counters, Report


def two_instances(tmp_path: Path) -> tuple[Instance, Instance]:
    app = make_app(tmp_path)
    return app.new_instance(app.release), app.new_instance(app.release)


def test_reported_requests_count_on_the_instances(tmp_path: Path) -> None:
    a, b = two_instances(tmp_path)
    known = {a.key: a, b.key: b}
    ledger = InflightLedger()
    ledger.apply(Report(version=0, counters={a.key: Counters(2, 2), b.key: Counters(1, 1)}), known)
    assert (a.inflight, b.inflight) == (2, 1)
    ledger.apply(Report(version=0, counters={a.key: Counters(0, 3)}), known)  # only what changed
    assert (a.inflight, b.inflight) == (0, 1)
    assert ledger.counts == {b.key: 1}


def test_reported_answers_add_up_on_the_instances_across_workers(tmp_path: Path) -> None:
    a, b = two_instances(tmp_path)
    known = {a.key: a, b.key: b}
    first, second = InflightLedger(), InflightLedger()
    a.request_started()
    a.request_answered()  # one answered through the main process's own proxy
    first.apply(Report(version=0, counters={a.key: Counters(1, 3, 2)}), known)
    second.apply(Report(version=0, counters={a.key: Counters(0, 5, 5), b.key: Counters(0, 1, 0)}), known)
    assert (a.answered, b.answered) == (8, 0)
    first.apply(Report(version=0, counters={a.key: Counters(0, 3, 3)}), known)  # cumulative: +1
    assert a.answered == 9
    first.release(known)  # a worker gone and a new one counting from 0 again: nothing subtracted
    first.apply(Report(version=0, counters={a.key: Counters(0, 1, 1)}), known)
    assert a.answered == 10
    # The worker dropped a's counters (idle, out of rotation) and made them again: counted from 0.
    second.apply(Report(version=0, counters={a.key: Counters(0, 2, 2)}), known)
    assert a.answered == 12


def test_an_instance_out_of_rotation_stays_busy_until_the_worker_acknowledges(tmp_path: Path) -> None:
    a, b = two_instances(tmp_path)
    known = {a.key: a, b.key: b}
    ledger = InflightLedger()
    ledger.snapshot_sent(1, {a.key: a, b.key: b})
    ledger.apply(Report(version=1, counters={}), known)
    ledger.snapshot_sent(2, {b.key: b})  # a leaves rotation: the worker may still have picked it
    assert (a.inflight, b.inflight) == (1, 0)
    ledger.apply(Report(version=1, counters={}), known)  # an older acknowledgement releases nothing
    assert a.inflight == 1
    # The request it picked just before snapshot 2 arrived is reported with the acknowledgement: the
    # count is taken before the pin goes, so `a` is never idle while that request runs.
    ledger.apply(Report(version=2, counters={a.key: Counters(1, 1)}), known)
    assert a.inflight == 1
    ledger.apply(Report(version=2, counters={a.key: Counters(0, 1)}), known)
    assert a.inflight == 0 and ledger.possible == {b.key: b}


def test_a_worker_gone_holds_nothing(tmp_path: Path) -> None:
    a, b = two_instances(tmp_path)
    known = {a.key: a, b.key: b}
    ledger = InflightLedger()
    ledger.snapshot_sent(1, {a.key: a})
    ledger.apply(Report(version=1, counters={a.key: Counters(3, 3)}), known)
    ledger.snapshot_sent(2, {b.key: b})
    assert (a.inflight, b.inflight) == (4, 0)  # three requests and the pin
    ledger.release(known)
    assert (a.inflight, b.inflight) == (0, 0)
    assert ledger.acked == -1 and not ledger.pins and not ledger.possible and not ledger.counts
