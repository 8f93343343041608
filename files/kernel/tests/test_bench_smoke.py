"""The benchmark script still runs end to end (numbers are not asserted: it is not a timing
test), and its recovery run reclaims every stale entry it made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_kernel.py"


def test_bench_quick_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.split("\n\n", 1)[0])
    assert data["evaluate_per_s"]["float_inputs"] > 0
    assert data["admit_vs_ping_one_connection"]["admits_recorded"] > 0
    for run in data["recovery"]:
        assert run["reclaimed"] == run["entries"]
    assert data["redis_benchmark_c1"]["PING_INLINE"]["rps"] > 0
    metrics = data["metrics"]
    assert metrics["decision_on_per_s"] > 0 and metrics["decision_off_per_s"] > 0
    assert metrics["rss"]["worker_import_on_kib"] > 0
