"""The reference execution worker: real Redis, real fake-Binance HTTP server, real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core_kernel import streams
from core_kernel.config import load_config
from core_kernel.exchange import FuturesExchange
from core_kernel.mode import TradingMode
from core_kernel.worker import Worker, publish_result_once

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent


@pytest.fixture
def pipe(redis_url, tmp_path):
    p = Pipeline(redis_url, tmp_path)
    yield p
    p.close()


def in_process_worker(pipe: Pipeline, name: str = "w1:quantum-execution") -> Worker:
    config = load_config(pipe.workdir / "core_gates.env")
    ex = FuturesExchange(
        config.binance_api_key, config.binance_api_secret, base_url=pipe.exchange.base_url
    )
    return Worker(pipe.client, config, TradingMode.TESTNET, ex, consumer=name, block_ms=100)


def publish(pipe: Pipeline, i: int, **over) -> str:
    data = intent(i, pipe.run)
    data.update(over)
    entry = streams.publish_intent_once(pipe.client, data)
    assert entry is not None
    return data["trace_id"]


def results(pipe: Pipeline) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in pipe.results():
        assert r["trace_id"] not in out, f"two results for {r['trace_id']}"
        out[r["trace_id"]] = r
    return out


def test_pass_hold_and_failed_results(pipe):
    w = in_process_worker(pipe)
    ok = publish(pipe, 1)
    held = publish(pipe, 3, qty="0.00001", model="XGBoost")  # two gates at once
    failed = publish(pipe, 5, qty="0.0105")  # passes the gates, breaks the exchange step size
    w.drain_own_pending()
    for entry in streams.read_new(pipe.client, w.consumer, block_ms=None, count=10):
        w.handle(entry)
    res = results(pipe)
    assert res[ok]["status"] == "order_placed"
    assert res[ok]["client_order_id"] == streams.client_order_id(ok)
    assert res[held]["status"] == "gate_blocked"
    assert res[held]["reasons"] == "MIN_NOTIONAL,MODEL_REGIME_MISMATCH"
    assert res[held]["primary"] == "MIN_NOTIONAL"
    assert res[failed]["status"] == "failed"
    assert "LOT_SIZE" in res[failed]["error"]
    assert [o["clientOrderId"] for o in pipe.exchange.orders()] == [ok]
    assert pipe.client.xpending(streams.STREAM, streams.GROUP)["pending"] == 0


def test_redelivered_intent_after_order_gives_one_order_one_result(pipe):
    # A worker placed the order and died before result and ack; another takes over.
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    (entry,) = streams.read_new(pipe.client, "dead:quantum-execution", block_ms=None)
    decision = w.store.admit(entry.intent())  # the dead worker's admit
    assert not decision.replayed
    i = entry.intent()
    w.exchange.place_order(tid, i.symbol, i.side, i.qty, ref_price=i.price)
    claimed = streams.self_claim(pipe.client, w.consumer, 0)
    assert [e.id for e in claimed.entries] == [entry.id]
    w.handle(claimed.entries[0])
    res = results(pipe)
    assert res[tid]["status"] == "order_placed"
    assert res[tid]["recovered"] == "true"
    assert res[tid]["replayed"] == "true"
    assert len(pipe.exchange.orders()) == 1
    # and a second redelivery of the same entry (crash between result and ack) adds nothing
    w.handle(claimed.entries[0])
    assert len(pipe.results()) == 1
    assert len(pipe.exchange.orders()) == 1
    assert w.stats.duplicate_results == 1


def test_result_publication_is_idempotent(redis_client):
    first = publish_result_once(redis_client, "t-9", {"trace_id": "t-9", "status": "x"})
    again = publish_result_once(redis_client, "t-9", {"trace_id": "t-9", "status": "y"})
    assert first is not None and again is None
    assert redis_client.xlen(streams.RESULT_STREAM) == 1
    assert 0 < redis_client.ttl("quantum:dedup:result:t-9") <= 86400


def test_lease_held_by_another_worker_leaves_entry_pending(pipe):
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    pipe.client.set(f"quantum:kernel:order_lease:{tid}", "other:quantum-execution", px=60000)
    (entry,) = streams.read_new(pipe.client, w.consumer, block_ms=None)
    w._run_entries([entry])
    assert w.stats.transient == 1
    assert pipe.exchange.orders() == []
    assert pipe.client.xpending(streams.STREAM, streams.GROUP)["pending"] == 1


def _wait(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_restarted_worker_reads_its_own_pending_first(pipe):
    w = pipe.workers[0]
    tid = publish(pipe, 1)
    # delivered to the worker's stable name before it "died": only it holds the entry
    assert streams.read_new(pipe.client, w.name, block_ms=None)
    w.start()
    _wait(lambda: tid in results(pipe))
    assert w.term() == 0
    consumers = pipe.client.xinfo_consumers(streams.STREAM, streams.GROUP)
    assert [(c["name"], c["pending"]) for c in consumers] == [(w.name, 0)]
    assert len(pipe.exchange.orders()) == 1


def test_sigterm_finishes_current_intent_and_notifies_systemd(pipe, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    w = pipe.workers[0]
    w.env["NOTIFY_SOCKET"] = sock_path
    pipe.exchange.set_faults(delay_ms=1500)  # every exchange answer is slow
    w.start()
    assert sock.recv(100) == b"READY=1"
    tid = publish(pipe, 1)
    _wait(lambda: pipe.exchange.state.stats.get("orders_accepted", 0) == 1)
    w.proc.send_signal(signal.SIGTERM)  # mid-order: the answer is still 1.5 s away
    assert w.proc.wait(20) == 0
    res = results(pipe)
    assert res[tid]["status"] == "order_placed"
    assert pipe.client.xpending(streams.STREAM, streams.GROUP)["pending"] == 0
    messages = set()
    sock.settimeout(0.2)
    try:
        while True:
            messages.add(sock.recv(100))
    except TimeoutError:
        pass
    assert b"WATCHDOG=1" in messages and b"STOPPING=1" in messages
    sock.close()


def test_blocking_read_longer_than_redis_py_default_timeout(pipe):
    w = pipe.workers[0]
    w.args = ["--block-ms", "5500", "--pel-interval", "30"]
    w.start()
    time.sleep(6.5)  # a full 5.5 s BLOCK with nothing to read: redis-py's 5 s default would fail
    assert w.alive()
    tid = publish(pipe, 1)
    _wait(lambda: tid in results(pipe))
    assert w.term() == 0
    log = w.log_path.read_text()
    assert "REDIS_UNAVAILABLE" not in log and "Timeout" not in log


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MIN_NOTIONAL_USD": "lots"}, "MIN_NOTIONAL_USD=lots"),
        ({"BINANCE_API_KEY": ""}, "BINANCE_API_KEY=: required"),
        (
            {"TRADING_MODE": "LIVE", "BINANCE_TESTNET": "false", "USE_BINANCE_TESTNET": "false"},
            "--allow-live",
        ),
    ],
)
def test_bad_config_refuses_to_start(pipe, env, needle):
    full = dict(pipe.workers[0].env)
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "core_kernel.worker"],
        check=False,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_consumer_name_is_stable_not_a_pid(pipe):
    config = load_config(pipe.workdir / "core_gates.env", environ={"CORE_GATES_ENV": ""})
    assert config.consumer_name == f"{socket.gethostname()}:quantum-execution"
    assert str(os.getpid()) not in config.consumer_name
