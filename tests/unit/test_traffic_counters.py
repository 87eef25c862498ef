"""Per-app traffic counters: what one request adds, and server-wide totals that never go backwards when a
data-plane worker exits and a new one starts from zero."""

from __future__ import annotations

from tako.server.observe.traffic import LATENCY_BUCKETS, TrafficTotals, traffic_snapshot
from tako.server.proxy.counters import RequestIds, TrafficCounters


def test_a_request_is_counted_by_status_class_latency_and_bytes() -> None:
    counters = TrafficCounters()
    web = counters.for_app("web")
    web.finished(204, 0.004, 0.003, 100, 50)
    web.finished(502, 20.0, 0.0, 10, 20)
    web.upstream_error(0)
    traffic = traffic_snapshot(counters).apps["web"]
    assert traffic.requests == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 1}
    assert traffic.latency_buckets[0] == 1 and traffic.latency_buckets[len(LATENCY_BUCKETS)] == 1
    assert traffic.bytes_in == 110 and traffic.bytes_out == 70
    assert traffic.upstream_errors["connect"] == 1 and traffic.total_requests == 2


def test_totals_keep_an_exited_workers_counts_but_not_its_gauges() -> None:
    main, worker = TrafficCounters(), TrafficCounters()
    totals = TrafficTotals(main)
    main.for_app("web").finished(200, 0.01, 0.01, 1, 1)
    busy = worker.for_app("web")
    busy.finished(200, 0.01, 0.01, 1, 1)
    busy.in_flight = 3
    totals.update(101, traffic_snapshot(worker))
    assert totals.snapshot().apps["web"].total_requests == 2
    assert totals.snapshot().apps["web"].in_flight == 3
    totals.retire(101)  # the worker died; its replacement starts from zero
    totals.update(102, traffic_snapshot(TrafficCounters()))
    after = totals.snapshot().apps["web"]
    assert after.total_requests == 2 and after.in_flight == 0


def test_request_ids_count_up_in_hex_after_a_random_prefix() -> None:
    ids = RequestIds()
    made = [ids.next() for _ in range(70_000)]  # past the carries into a 2nd, 3rd, 4th and 5th digit
    prefix = made[0][:-1]
    assert len(prefix) == 17 and prefix.endswith(b"-")
    assert made == [prefix + b"%x" % n for n in range(1, 70_001)]
    assert RequestIds().next()[:-1] != prefix  # another process's ids differ
