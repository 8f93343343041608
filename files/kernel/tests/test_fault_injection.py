"""Fault-injection proof: >= 1000 intents, duplicates, two worker processes, faults mid-run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import run_faults, table

STALE_MS = 2000


@pytest.mark.slow
def test_exactly_once_under_faults(redis_server, redis_url, tmp_path):
    report = run_faults(
        redis_url, redis_server.restart, tmp_path, n_intents=1000, stale_ms=STALE_MS
    )
    print("\n" + table(report, STALE_MS))
    # one order per distinct admitted intent, none for held ones, no duplicates
    assert report.orders == report.order_placed > 0
    assert report.duplicate_orders == 0
    assert report.orders_for_held == 0
    assert report.placed_without_order == 0
    assert report.orders_without_result == 0
    # every intent exactly one result, the deliberate holds held for their reason
    assert report.missing_results == 0
    assert report.duplicate_results == 0
    assert report.results == report.distinct == 1000
    assert report.failed == 0
    assert report.wrong_holds == 0
    assert report.holds_by_reason["MIN_NOTIONAL"] == 100
    assert report.holds_by_reason["MODEL_REGIME_MISMATCH"] > 0
    assert report.duplicates_skipped > 100
    # the faults really happened
    assert report.faults["fault_drop_after_accept"] == 3
    assert report.faults["fault_error_after_accept"] == 3
    assert report.faults["fault_rate_limit"] == 4
    assert report.recovered_orders >= 1
    # nothing left behind: no pending entry, only the two stable consumer names
    assert report.pending_left == 0
    assert sorted(c["name"] for c in report.consumers) == [
        "lab-a:quantum-execution",
        "lab-b:quantum-execution",
    ]
    assert all(c["pending"] == 0 for c in report.consumers)
    assert report.worker_exit_codes == [0, 0]
    # takeover of the killed worker's pending intents within STALE_IDLE_MS + 5 s
    assert report.takeover_latency_s
    assert max(report.takeover_latency_s) <= STALE_MS / 1000 + 5
    assert report.ok
