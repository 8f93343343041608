"""Testinfra checks of playbooks/lab_pipeline.yml: reference services against the fake exchange.

Each test publishes its own intents (unique trace ids), so the tests do not depend on each other
or on the demo; gate state (cooldown per symbol, 3 trades per 10 min) is shared, so the intents
use symbols the demo does not and a held result is accepted only where a gate explains it.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

BIN = "/opt/quantum/core-kernel/current/bin"
PY = f"{BIN}/python"
EXCHANGE = "http://127.0.0.1:18080"
WORKER = "quantum-execution.service"

# Runs in the host's kernel venv: publish / deliver / read results / read the exchange's orders.
HELPER = r"""
import json, sys, urllib.request
from core_kernel import consume, streams
from core_kernel.config import load_config
cfg = load_config()
r = streams.make_client(cfg.redis_url)
cmd, arg = sys.argv[1], sys.argv[2]
if cmd == "publish":
    print(json.dumps(streams.publish_intent_once(r, json.loads(arg))))
elif cmd == "deliver":
    got = consume.read_new(consume.raw_client(r), cfg.consumer_name, block_ms=None, count=1)
    print(json.dumps([e.id for e in got]))
elif cmd == "state":
    res = [
        {k: v for k, v in f.items()}
        for _, f in r.xrange(cfg.result_stream, "-", "+")
        if f.get("trace_id") == arg
    ]
    with urllib.request.urlopen("EXCHANGE_URL/_orders", timeout=10) as resp:
        orders = [o for o in json.load(resp) if o.get("clientOrderId") == arg]
    cons = [
        {"name": c["name"], "pending": c["pending"]}
        for c in r.xinfo_consumers(streams.STREAM, streams.GROUP)
    ]
    print(json.dumps({"results": res, "orders": orders, "consumers": cons}))
""".replace("EXCHANGE_URL", EXCHANGE)


def helper(host, *args: str) -> object:
    # testinfra shell-quotes the arguments given after the command template
    cmd = host.run(f"{PY} -c %s" + " %s" * len(args), HELPER, *args)
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def intent(trace_id: str) -> str:
    return json.dumps(
        {
            "trace_id": trace_id,
            "symbol": "XRPUSDT",
            "side": "BUY",
            "qty": "200.0",
            "price": "0.6",
            "expected_move_usd": "5",
            "tp": "0.612",
            "sl": "0.596",
            "model": "NHiTS",
            "regime": "TREND",
            "leverage": "1",
        }
    )


def wait_state(host, trace_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = helper(host, "state", trace_id)
        if state["results"] or time.monotonic() > deadline:
            return state
        time.sleep(1)


@pytest.fixture(autouse=True)
def services_up(host):
    for unit in ("quantum-fake-binance.service", WORKER, "quantum-ai-strategy-router.service"):
        assert host.service(unit).is_running, unit
    yield
    host.run(f"systemctl start {WORKER}")


def test_services_run_the_reference_binaries(host):
    for unit in (WORKER, "quantum-ai-strategy-router.service"):
        show = host.run(f"systemctl show -p ExecStart -p Type -p DropInPaths {unit}").stdout
        assert f"{BIN}/" in show
        assert "Type=notify" in show
        assert "30-lab-reference.conf" in show
    assert host.socket("tcp://127.0.0.1:18080").is_listening


def test_intent_published_twice_is_one_order(host):
    tid = f"mol-dup-{uuid.uuid4().hex[:12]}"
    first = helper(host, "publish", intent(tid))
    second = helper(host, "publish", intent(tid))
    assert first is not None and second is None  # the router's dedup
    state = wait_state(host, tid)
    assert len(state["results"]) == 1
    result = state["results"][0]
    if result["status"] == "order_placed":
        assert len(state["orders"]) == 1
    else:  # held by the shared cooldown/rate gates of an earlier run: then no order at all
        assert result["status"] == "gate_blocked"
        assert set(result["reasons"].split(",")) <= {"COOLDOWN", "RATE_LIMIT"}
        assert state["orders"] == []


def test_stopped_workers_pending_intent_is_processed_after_restart(host):
    tid = f"mol-pend-{uuid.uuid4().hex[:12]}"
    assert host.run(f"systemctl stop {WORKER}").rc == 0
    assert helper(host, "publish", intent(tid)) is not None
    delivered = helper(host, "deliver", "-")
    assert len(delivered) == 1
    pending = helper(host, "state", tid)
    assert any(c["pending"] == 1 for c in pending["consumers"])
    assert pending["results"] == []
    assert host.run(f"systemctl start {WORKER}").rc == 0
    state = wait_state(host, tid)
    assert len(state["results"]) == 1
    assert state["results"][0]["entry_id"] == delivered[0]
    assert len(state["orders"]) == (1 if state["results"][0]["status"] == "order_placed" else 0)
    assert all(c["pending"] == 0 for c in wait_state(host, tid)["consumers"])
