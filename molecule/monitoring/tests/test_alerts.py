"""Every failure of the pipeline raises its alert, seen through a real Prometheus on the lab host.

The lab host runs Debian's prometheus, node exporter and redis exporter (kernel_monitoring, all
switched on, with the lab's short intervals from host_vars/). Each test injects one fault for
real, waits until the matching alert is *firing* in Prometheus's /api/v1/alerts, restores the
host and waits until it is healthy again. The healthy host fires nothing, for a while. The time
from each fault to its alert is written to build/monitoring_alert_times.json on the controller.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The default scenario's pipeline helpers (scenario test dirs are not packages).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "default" / "tests"))
from lab_pipeline import BIN, EXCHANGE, WORKER, helper, intent

PROM = "http://127.0.0.1:9090"
ROUTER = "quantum-ai-strategy-router.service"
KERNEL = f"{BIN}/core-kernel"
CONFIG = "/etc/quantum/core_gates.env"
DLQ = "quantum:stream:trade.intent.dlq"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
# What "within a bound" means here: scrape and evaluation every 2 s, for: 6 s, the sweep every
# 10 s with 3 missed runs allowed, so every alert fires well inside a minute.
FIRE_BOUND_S = 60
TIMES = (
    Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / "build/monitoring_alert_times.json"
)
_times: dict[str, float] = {}
LAST_SWEEP = "quantum_kernel_recovery_last_success_timestamp_seconds"


def _get(host, path: str) -> dict:
    out = host.run("curl -fsS --max-time 5 %s", PROM + path)
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def alerts(host) -> dict[str, str]:
    """alertname -> state (firing wins over pending)."""
    got: dict[str, str] = {}
    for a in _get(host, "/api/v1/alerts")["data"]["alerts"]:
        name = a["labels"]["alertname"]
        if got.get(name) != "firing":
            got[name] = a["state"]
    return got


def firing(host) -> set[str]:
    return {name for name, state in alerts(host).items() if state == "firing"}


def wait_firing(host, name: str, started: float, bound: float = FIRE_BOUND_S) -> float:
    while True:
        now = firing(host)
        elapsed = time.monotonic() - started
        if name in now:
            _times[name] = round(elapsed, 1)
            TIMES.parent.mkdir(parents=True, exist_ok=True)
            TIMES.write_text(json.dumps(_times, indent=2, sort_keys=True) + "\n")
            return elapsed
        assert elapsed < bound, (
            f"{name} not firing {bound} s after the fault; firing: {sorted(now)}"
        )
        time.sleep(1)


def wait_healthy(host, bound: float = 120) -> None:
    """Nothing firing or pending (a restored fault's alerts resolve after their windows)."""
    deadline = time.monotonic() + bound
    while True:
        now = alerts(host)
        if not now:
            return
        assert time.monotonic() < deadline, f"still alerting {bound} s after the restore: {now}"
        time.sleep(2)


def run(host, cmd: str) -> str:
    out = host.run(cmd)
    assert out.rc == 0, f"{cmd}: {out.stderr}"
    return out.stdout


def redis(host, *args: str) -> str:
    return run(host, "redis-cli " + " ".join(f"'{a}'" for a in args))


def send(host, label: str, symbol: str) -> str:
    tid = f"mon-{label}-{uuid.uuid4().hex[:10]}"
    assert helper(host, "publish", intent(tid, symbol=symbol)) is not None
    return tid


def fault(host, **switches: int) -> None:
    body = json.dumps(switches)
    run(host, f"curl -fsS --max-time 5 -X POST -d '{body}' {EXCHANGE}/_fault")


@pytest.fixture(scope="module", autouse=True)
def monitored(host) -> Iterator[None]:
    """Every scrape target up and the sweep's textfile read before the first test."""
    deadline = time.monotonic() + 90
    while True:
        targets = _get(host, "/api/v1/targets")["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        sweep = _get(
            host, "/api/v1/query?query=quantum_kernel_recovery_last_success_timestamp_seconds"
        )
        if set(health.values()) == {"up"} and sweep["data"]["result"]:
            break
        assert time.monotonic() < deadline, f"targets {health}, sweep metric {sweep['data']}"
        time.sleep(2)
    assert set(health) == {"prometheus", "quantum_worker", "quantum_router", "node", "redis"}
    yield
    fault(host, rate_limit=0, ack_drop=0, query_5xx=0, ack_503=0)
    host.run("rm -f " + TEXTFILE_DIR + "/broken.prom")
    host.run(f"systemctl start redis-server {WORKER} {ROUTER}")


@pytest.fixture(autouse=True)
def restored(host) -> Iterator[None]:
    yield
    wait_healthy(host)


def test_rules_loaded_from_the_role(host):
    groups = _get(host, "/api/v1/rules")["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert {
        "QuantumExecutionWorkerDown",
        "QuantumExecutionWorkerRestartLoop",
        "QuantumIntentsStalled",
        "QuantumPendingTooOld",
        "QuantumDeadLetterGrew",
        "QuantumRecoverySweepNotSucceeding",
        "QuantumOrderStatusUnknown",
        "QuantumRedisDown",
        "QuantumExchangeErrors",
        "QuantumExchangeRateLimited",
        "QuantumTextfileScrapeError",
        "QuantumTradingHalted",
        "QuantumRouterDown",
    } <= names


def test_healthy_lab_fires_nothing(host):
    wait_healthy(host)
    # An intent through the whole pipeline, then a quiet half minute: still nothing.
    tid = send(host, "healthy", "XRPUSDT")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert alerts(host) == {}, tid
        time.sleep(2)


def test_worker_stopped(host):
    run(host, f"systemctl stop {WORKER}")
    try:
        wait_firing(host, "QuantumExecutionWorkerDown", time.monotonic())
    finally:
        run(host, f"systemctl start {WORKER}")


def test_worker_crash_loop(host):
    started = time.monotonic()
    try:
        for _ in range(4):
            pid = run(host, f"systemctl show -p MainPID --value {WORKER}").strip()
            assert pid not in ("", "0")
            run(host, f"kill -9 {pid}")
            # Restart=always with RestartSec=3: wait for the next process before killing again.
            deadline = time.monotonic() + 20
            while run(host, f"systemctl show -p MainPID --value {WORKER}").strip() in (pid, "0"):
                assert time.monotonic() < deadline, "the worker was not restarted"
                time.sleep(0.5)
        wait_firing(host, "QuantumExecutionWorkerRestartLoop", started)
    finally:
        run(host, f"systemctl start {WORKER}")


def test_entry_pending_with_no_worker(host):
    run(host, f"systemctl stop {WORKER}")
    try:
        started = time.monotonic()
        send(host, "pending", "SOLUSDT")
        assert len(helper(host, "deliver", "-")) == 1
        wait_firing(host, "QuantumPendingTooOld", started)
        wait_firing(host, "QuantumIntentsStalled", started)
    finally:
        run(host, f"systemctl start {WORKER}")


def test_dead_letter_stream_grew(host):
    started = time.monotonic()
    redis(host, "XADD", DLQ, "*", "reason", "molecule: monitoring test")
    wait_firing(host, "QuantumDeadLetterGrew", started)


def test_recovery_sweep_failing(host):
    # The password changes under the kernel: every sweep fails to authenticate.
    password = uuid.uuid4().hex
    redis(host, "CONFIG", "SET", "requirepass", password)
    try:
        wait_firing(host, "QuantumRecoverySweepNotSucceeding", time.monotonic())
    finally:
        run(host, f"REDISCLI_AUTH={password} redis-cli CONFIG SET requirepass ''")
        run(host, f"systemctl restart {WORKER} {ROUTER}")


def test_redis_down(host):
    run(host, "systemctl stop redis-server")
    try:
        wait_firing(host, "QuantumRedisDown", time.monotonic())
    finally:
        run(host, "systemctl start redis-server")
        run(host, f"systemctl restart {WORKER} {ROUTER}")


def test_exchange_rate_limiting(host):
    fault(host, rate_limit=20)
    try:
        started = time.monotonic()
        send(host, "ratelimit", "ETHUSDT")
        wait_firing(host, "QuantumExchangeRateLimited", started)
    finally:
        fault(host, rate_limit=0)


def test_exchange_unavailable(host):
    # 503 on the order endpoint: the send status is unknown, the worker asks and errors count.
    fault(host, ack_503=5)
    try:
        started = time.monotonic()
        send(host, "unavail", "BTCUSDT")
        wait_firing(host, "QuantumExchangeErrors", started)
    finally:
        fault(host, ack_503=0)


def test_order_status_unknown(host):
    # The answer is lost and every lookup of the order fails (503) until the fault is lifted:
    # the status stays unknown. (A lost answer alone resolves by lookup once the request's
    # recvWindow has passed, in about 6 s: shorter than the alert's for:.)
    fault(host, ack_drop=1, query_5xx=1000)
    try:
        started = time.monotonic()
        send(host, "unknown", "XRPUSDT")
        wait_firing(host, "QuantumOrderStatusUnknown", started)
    finally:
        fault(host, ack_drop=0, query_5xx=0)


def test_kill_switch_engaged(host):
    run(host, f"{KERNEL} halt --config {CONFIG} --reason 'molecule: monitoring'")
    try:
        wait_firing(host, "QuantumTradingHalted", time.monotonic())
    finally:
        run(host, f"{KERNEL} resume --config {CONFIG} --reason 'molecule: monitoring done'")


def test_textfile_scrape_error(host):
    run(host, f"printf 'not a metric {{\\n' > {TEXTFILE_DIR}/broken.prom")
    try:
        wait_firing(host, "QuantumTextfileScrapeError", time.monotonic())
    finally:
        run(host, f"rm -f {TEXTFILE_DIR}/broken.prom")


def test_router_stopped(host):
    run(host, f"systemctl stop {ROUTER}")
    try:
        wait_firing(host, "QuantumRouterDown", time.monotonic())
    finally:
        run(host, f"systemctl start {ROUTER}")
