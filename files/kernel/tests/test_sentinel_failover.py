"""Failover in the proof (issue 15 item 2): the exactly-once run with Redis behind Sentinel, the
primary killed mid-run. The bigger run: ``python bench/fault_injection.py --sentinel``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sentinel_lab import SentinelLab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import failover_table, run_failover

N = 300


@pytest.mark.slow
def test_exactly_once_through_a_sentinel_failover(tmp_path: Path) -> None:
    lab = SentinelLab(tmp_path / "lab").start()
    try:
        report, fo = run_failover(lab, tmp_path, n_intents=N, timeout_s=90)
    finally:
        lab.stop()
    print("\n" + failover_table(report, fo))
    # the failover really happened, mid-run, and nobody but the sentinels moved anyone
    assert fo.master_port_before == lab.primary.port
    assert fo.master_port_after == lab.replica.port
    assert 0 < fo.results_before_kill < N
    assert 0 < fo.first_processed_s < 30
    # the newest writes really were lost (the replication cut): results, and intents the
    # upstream had to publish again, and orders only the exchange still knew about
    assert fo.lost_results > 0
    assert report.republished > 0
    assert report.recovered_orders > 0
    # exactly one exchange order per distinct admitted intent, every intent exactly one result
    assert report.orders == report.order_placed > 0
    assert report.duplicate_orders == 0
    assert report.orders_for_held == 0
    assert report.placed_without_order == 0
    assert report.orders_without_result == 0
    assert report.missing_results == 0
    assert report.duplicate_results == 0
    assert report.results == report.distinct == N
    assert report.failed == 0
    assert report.wrong_holds == 0
    assert report.holds_by_reason["MIN_NOTIONAL"] == N // 10
    # the workers followed on their own: none died, none left anything behind
    assert report.unexpected_exits == 0
    assert report.worker_exit_codes == [0, 0]
    assert report.order_unknown_left == 0
    assert report.pending_left == 0
    assert report.ok
    assert fo.secrets_in_logs == 0
