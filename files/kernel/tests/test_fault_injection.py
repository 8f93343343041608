"""Fault-injection proof (issue 10): every fault of the issue on one run, plus a shared-name run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Report, run_faults, table

STALE_MS = 2000


def _exactly_once(report: Report, n: int) -> None:
    # one order per distinct admitted intent, none for held ones, no duplicates
    assert report.orders == report.order_placed > 0
    assert report.duplicate_orders == 0
    assert report.orders_for_held == 0
    assert report.placed_without_order == 0
    assert report.orders_without_result == 0
    # every intent exactly one result, the deliberate holds held for their reason
    assert report.missing_results == 0
    assert report.duplicate_results == 0
    assert report.results == report.distinct == n
    assert report.failed == 0
    assert report.wrong_holds == 0
    assert report.holds_by_reason["MIN_NOTIONAL"] == n // 10
    # poison: one invalid_entry result and one dead letter each, and no worker died of it
    assert report.poison_sent > 0
    assert report.invalid_results == report.poison_dead_lettered == report.poison_sent
    assert report.unexpected_exits == 0
    assert report.worker_exit_codes == [0, 0]
    # nothing unresolved or left behind
    assert report.order_unknown_left == 0
    assert report.pending_left == 0
    assert all(c["pending"] == 0 for c in report.consumers)
    assert report.ok


@pytest.mark.slow
def test_exactly_once_under_every_fault(redis_server, redis_url, tmp_path):
    report = run_faults(redis_url, redis_server, tmp_path, n_intents=1000, stale_ms=STALE_MS)
    print("\n" + table(report, STALE_MS))
    _exactly_once(report, 1000)
    assert report.holds_by_reason["MODEL_REGIME_MISMATCH"] > 0
    assert report.duplicates_skipped > 100
    # the faults really happened
    faults = report.faults
    assert faults["fault_drop_after_accept"] == 3
    assert faults["fault_error_after_accept"] == 3
    assert faults["fault_rate_limit"] == 4
    assert faults["fault_ack_1007"] == 3
    assert faults["fault_ack_503"] == 2
    assert faults["fault_ack_drop"] == 2
    assert faults["late_executed"] >= 1
    assert faults["fault_query_5xx"] == 3
    assert faults["fault_query_1021"] == 2
    assert faults["fault_query_403"] == 2
    assert faults["redis_restored_older"] == 1
    assert report.recovered_orders >= 1
    assert sorted(c["name"] for c in report.consumers) == [
        "lab-a:quantum-execution",
        "lab-b:quantum-execution",
    ]
    # takeover of the killed worker's pending intents: lease expiry + recvWindow + margin + 5 s
    assert report.takeover_latency_s
    assert max(report.takeover_latency_s) <= report.takeover_goal_s


@pytest.mark.slow
def test_exactly_once_with_two_workers_under_one_consumer_name(redis_server, redis_url, tmp_path):
    report = run_faults(
        redis_url,
        redis_server,
        tmp_path,
        n_intents=300,
        stale_ms=STALE_MS,
        shared_name=True,
        restore=False,
    )
    print("\n" + table(report, STALE_MS))
    _exactly_once(report, 300)
    assert [c["name"] for c in report.consumers] == ["lab-shared:quantum-execution"]
