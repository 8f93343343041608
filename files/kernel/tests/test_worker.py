"""The reference execution worker: real Redis, real fake-Binance HTTP server, real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core_kernel import consume, streams
from core_kernel.config import load_config
from core_kernel.exchange import from_config
from core_kernel.intent import encode_intent, parse_intent
from core_kernel.lease import OrderLease, Taken
from core_kernel.mode import TradingMode, detect_mode
from core_kernel.recovery import recover
from core_kernel.worker import (
    ORDER_UNKNOWN_KEY,
    Worker,
    durability_problem,
    publish_result_once,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent


@pytest.fixture
def pipe(redis_url, tmp_path):
    p = Pipeline(redis_url, tmp_path)
    yield p
    p.close()


def in_process_worker(pipe: Pipeline, name: str = "w1:quantum-execution", **env) -> Worker:
    config = load_config(
        pipe.workdir / "core_gates.env", environ={k: str(v) for k, v in env.items()}
    )
    ex = from_config(config, testnet=True, timeout_s=2.0)
    return Worker(pipe.client, config, TradingMode.TESTNET, ex, consumer=name, block_ms=100)


def publish(pipe: Pipeline, i: int, **over) -> str:
    data = intent(i, pipe.run)
    data.update(over)
    entry = streams.publish_intent_once(pipe.client, parse_intent(data))
    assert entry is not None
    return data["trace_id"]


def results(pipe: Pipeline) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in pipe.results():
        key = r.get("trace_id") or "entry:" + r["entry_id"]
        assert key not in out, f"two results for {key}"
        out[key] = r
    return out


def read_new(w: Worker, consumer: str | None = None) -> list[consume.StreamEntry]:
    return consume.read_new(w.raw, consumer or w.consumer, block_ms=None, count=100)


def pending(pipe: Pipeline) -> int:
    return int(pipe.client.xpending(streams.STREAM, streams.GROUP)["pending"])


def test_pass_hold_and_failed_results(pipe):
    w = in_process_worker(pipe)
    ok = publish(pipe, 1)
    held = publish(pipe, 3, qty="0.00001", model="XGBoost")  # two gates at once
    failed = publish(pipe, 5, qty="0.0105")  # passes the gates, breaks the exchange step size
    w._run_entries(read_new(w))
    res = results(pipe)
    assert res[ok]["status"] == "order_placed"
    assert res[ok]["client_order_id"] == ok
    assert res[held]["status"] == "gate_blocked"
    assert res[held]["reasons"] == "MIN_NOTIONAL,MODEL_REGIME_MISMATCH"
    assert res[held]["primary"] == "MIN_NOTIONAL"
    assert res[failed]["status"] == "failed"
    assert "LOT_SIZE" in res[failed]["error"]
    assert [o["clientOrderId"] for o in pipe.exchange_orders()] == [ok]
    assert pending(pipe) == 0


def test_redelivered_intent_after_order_gives_one_order_one_result(pipe):
    # A worker placed the order and died before result and ack; another takes over.
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    (entry,) = read_new(w, "dead:quantum-execution")
    i, decision = w.store.admit_entry(entry.fields, entry.id)  # the dead worker's admit
    assert i is not None and not decision.replayed
    w.exchange.place_order(decision.client_order_id, i.symbol, i.side, i.qty, ref_price=i.price)
    consume.claim_stale(w.raw, w.consumer, 0)
    (mine,) = consume.read_own_pending(w.raw, w.consumer)
    assert mine.id == entry.id and mine.deliveries == 2
    w.handle(mine)
    res = results(pipe)
    assert res[tid]["status"] == "order_placed"
    assert res[tid]["recovered"] == "true"
    assert res[tid]["replayed"] == "true"
    assert len(pipe.exchange_orders()) == 1
    # and a second redelivery of the same entry (crash between result and ack) adds nothing
    w.handle(mine)
    assert len(pipe.results()) == 1
    assert len(pipe.exchange_orders()) == 1
    assert w.stats.duplicate_results == 1


def test_result_publication_is_idempotent(redis_client):
    first = publish_result_once(redis_client, "t-9", {"trace_id": "t-9", "status": "x"})
    again = publish_result_once(redis_client, "t-9", {"trace_id": "t-9", "status": "y"})
    assert first is not None and again is None
    assert redis_client.xlen(streams.RESULT_STREAM) == 1
    assert 0 < redis_client.ttl("quantum:dedup:result:t-9") <= 86400


def test_lease_held_by_another_process_leaves_entry_pending(pipe):
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    pipe.client.set(f"quantum:kernel:order_lease:{tid}", "another-token", px=60000)
    w._run_entries(read_new(w))
    assert w.stats.transient == 1
    assert pipe.exchange_orders() == []
    assert pending(pipe) == 1


def test_two_processes_with_one_consumer_name_never_both_send(pipe):
    """Issue case 6: a lease under my consumer name is not mine - the token decides."""
    a = in_process_worker(pipe, "same:quantum-execution")
    b = in_process_worker(pipe, "same:quantum-execution")
    assert a.lease.token != b.lease.token
    tid = publish(pipe, 1)
    (entry,) = read_new(a)
    # A's exchange calls are slow (each of time sync, exchangeInfo, position mode, lookup and
    # send: all inside A's 6 s lease): B runs while A is mid-send
    pipe.fault(delay_ms=700)
    t = threading.Thread(target=a.handle_contained, args=(entry,))
    t.start()
    _wait(lambda: pipe.client.get(f"quantum:kernel:order_lease:{tid}") is not None)
    (same,) = consume.read_own_pending(b.raw, b.consumer)  # B sees A's PEL: the same name
    assert b.handle_contained(same) is True  # left pending: the lease is A's
    t.join(30)
    pipe.fault(delay_ms=0)
    assert [o["clientOrderId"] for o in pipe.exchange_orders()] == [tid]
    assert results(pipe)[tid]["status"] == "order_placed"


def test_holder_whose_lease_expired_does_not_send(pipe):
    """Issue case 2: A slept past its lease, B took over; A's fence refuses the send."""
    a = in_process_worker(pipe, "a:quantum-execution")
    tid = publish(pipe, 1)
    assert a.lease.acquire(tid) is Taken.FRESH
    pipe.client.pexpire(f"quantum:kernel:order_lease:{tid}", 1)
    time.sleep(0.01)
    other = OrderLease(pipe.client, ttl_ms=10000, min_remaining_ms=1500)
    assert other.acquire(tid) is Taken.FRESH
    assert a.lease.renew(tid) is False
    # and a lease of ours too close to expiry is not renewed either
    assert other.renew(tid) is True
    pipe.client.pexpire(f"quantum:kernel:order_lease:{tid}", 1000)
    assert other.renew(tid) is False
    assert other.release(tid) is True and a.lease.release(tid) is False


def test_ambiguous_send_is_order_unknown_then_resolved_once(pipe):
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    pipe.fault(ack_1007=1, execute_after_ms=400, visibility_ms=200)
    w._run_entries(read_new(w))
    unknown = pipe.client.hgetall(ORDER_UNKNOWN_KEY)
    assert len(unknown) == 1
    (rec,) = [json.loads(v) for v in unknown.values()]
    assert rec["state"] == "unknown" and rec["client_order_id"] == tid
    assert results(pipe) == {}  # never acked as failed
    # re-reading the PEL while it is unknown does not move its delivery counter
    for _ in range(5):
        w.drain_own_pending()
    (entry,) = consume.read_own_pending(w.raw, w.consumer)
    assert entry.deliveries == 1
    _wait(lambda: (w.drain_own_pending(), pending(pipe) == 0)[1], timeout=15)
    res = results(pipe)
    assert res[tid]["status"] == "order_placed" and res[tid]["recovered"] == "true"
    assert len(pipe.exchange_orders()) == 1
    assert pipe.client.hlen(ORDER_UNKNOWN_KEY) == 0


@pytest.mark.parametrize("switch", ["query_5xx", "query_1021", "query_403"])
def test_lookup_failure_is_never_a_failed_result(pipe, switch):
    """Issue case 7: an error on the lookup leaves the intent unknown, never failed/acked."""
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    pipe.fault(**{switch: 100})
    w._run_entries(read_new(w))
    assert results(pipe) == {}
    assert pending(pipe) == 1
    assert pipe.exchange_orders() == []
    pipe.fault(**{switch: 0})
    w.drain_own_pending()
    assert results(pipe)[tid]["status"] == "order_placed"


def test_recovery_sweep_never_dead_letters_an_unknown_order(pipe):
    w = in_process_worker(pipe)
    publish(pipe, 1)
    pipe.fault(ack_503=1, ambiguous_executes=0)
    w._run_entries(read_new(w))
    assert pipe.client.hlen(ORDER_UNKNOWN_KEY) == 1
    config = load_config(
        pipe.workdir / "core_gates.env", environ={"MAX_DELIVERIES": "1", "STALE_IDLE_MS": "1"}
    )
    for _ in range(3):
        time.sleep(0.01)
        recover(pipe.client, config, detect_mode(config.mode_env()), lambda e, f: None)
    assert pipe.client.xlen(streams.DEAD_LETTER_STREAM) == 0
    assert pending(pipe) == 1


def test_poison_entries_are_contained_and_dead_lettered_with_a_reason(pipe):
    """Issue case 9: one bad byte used to crash-loop the worker and block its neighbours."""
    w = in_process_worker(pipe)
    before = publish(pipe, 1)
    raw = w.raw
    raw.xadd(streams.STREAM, {b"trace_id": b"p-1", b"symbol": b"BTC\xff", b"side": b"BUY"})
    raw.xadd(streams.STREAM, {b"\xfe\xfe": b"garbage"})
    raw.xadd(streams.STREAM, {b"trace_id": b"p-3", b"symbol": b"X" * 2_000_000})
    after = publish(pipe, 3)
    w._run_entries(read_new(w))
    res = results(pipe)
    assert res[before]["status"] == "order_placed" and res[after]["status"] == "order_placed"
    invalid = [r for r in res.values() if r["status"] == "invalid_entry"]
    assert len(invalid) == 3
    assert all("INVALID_INPUT" in r["reasons"] for r in invalid)
    dlq = raw.xrange(streams.DEAD_LETTER_STREAM)  # as bytes: the poison is kept as it came
    assert [f[b"dlq_reason"] for _, f in dlq] == [b"invalid_entry"] * 3
    assert dlq[0][1][b"symbol"] == b"BTC\xff"
    assert pending(pipe) == 0


def test_over_max_deliveries_the_worker_dead_letters_with_reason_and_decision(pipe):
    w = in_process_worker(pipe, MAX_DELIVERIES="2")
    tid = publish(pipe, 3, qty="0.00001")  # held: MIN_NOTIONAL
    (entry,) = read_new(w)
    over = consume.StreamEntry(entry.id, entry.fields, 3)
    w.handle(over)
    ((_, fields),) = pipe.client.xrange(streams.DEAD_LETTER_STREAM)
    assert fields["dlq_reason"] == "max_deliveries"
    assert fields["dlq_verdict"] == "HOLD" and "MIN_NOTIONAL" in fields["dlq_reasons"]
    assert results(pipe)[tid]["status"] == "dead_lettered"
    assert pending(pipe) == 0


def test_a_pass_over_max_deliveries_is_resolved_not_dead_lettered(pipe):
    w = in_process_worker(pipe, MAX_DELIVERIES="1")
    tid = publish(pipe, 1)
    (entry,) = read_new(w)
    over = consume.StreamEntry(entry.id, entry.fields, 9)
    # redelivered with no record: one recvWindow + margin of waiting, then the send
    _wait(lambda: not w.handle_contained(over), timeout=10)
    assert pipe.client.xlen(streams.DEAD_LETTER_STREAM) == 0
    assert results(pipe)[tid]["status"] == "order_placed"


def test_redis_state_lost_after_the_order_gives_no_second_order(pipe):
    """Issue cases 4/5: the decision is gone (old snapshot, TTL) - the exchange still knows."""
    w = in_process_worker(pipe)
    tid = publish(pipe, 1)
    w._run_entries(read_new(w))
    assert len(pipe.exchange_orders()) == 1
    for key in pipe.client.scan_iter("quantum:dedup:*"):
        pipe.client.delete(key)
    pipe.client.delete("quantum:stream:trade.result")
    entry_id = pipe.client.xadd(streams.STREAM, encode_intent(parse_intent(intent(1, pipe.run))))
    (entry,) = read_new(w)
    assert entry.id == entry_id
    w.handle(entry)
    res = results(pipe)
    assert res[tid]["status"] == "order_placed" and res[tid]["recovered"] == "true"
    assert len(pipe.exchange_orders()) == 1


def test_held_redelivery_still_reports_an_order_that_exists(pipe):
    w = in_process_worker(pipe, MIN_HOLD_SECONDS="300")
    first = publish(pipe, 1)
    w._run_entries(read_new(w))
    # Redis lost the decision of `first`; its replay now holds on the cooldown it set itself
    pipe.client.delete(f"quantum:dedup:order:{first}")
    pipe.client.delete(f"quantum:dedup:result:{first}")
    entry_id = pipe.client.xadd(streams.STREAM, encode_intent(parse_intent(intent(1, pipe.run))))
    (entry,) = read_new(w)
    w.handle(consume.StreamEntry(entry_id, entry.fields, 2))
    res = [r for r in pipe.results() if r["trace_id"] == first]
    assert res[-1]["status"] == "order_placed" and res[-1]["recovered"] == "true"
    assert len(pipe.exchange_orders()) == 1


def test_a_stored_pass_older_than_the_max_age_is_never_sent(pipe):
    w = in_process_worker(pipe)
    data = intent(1, pipe.run)
    i = parse_intent(data)
    assert w.store.admit(i).verdict.value == "PASS"  # stored PASS, no order yet
    old_id = pipe.client.xadd(streams.STREAM, encode_intent(i), id="1000-1")
    (entry,) = read_new(w)
    assert entry.id == old_id
    again = consume.StreamEntry(entry.id, entry.fields, 2)
    _wait(lambda: not w.handle_contained(again), timeout=10)
    res = results(pipe)[data["trace_id"]]
    assert res["status"] == "gate_blocked" and res["reasons"] == "INTENT_EXPIRED"
    assert pipe.exchange_orders() == []


def test_durability_warning_and_refusal(pipe, caplog):
    w = in_process_worker(pipe)
    pipe.client.config_set("appendfsync", "everysec")
    try:
        assert durability_problem(pipe.client) is not None
        assert w.check_durability() is True
        refusing = in_process_worker(pipe, REDIS_DURABILITY="refuse")
        assert refusing.run() == 2
    finally:
        pipe.client.config_set("appendfsync", "always")
    assert durability_problem(pipe.client) is None
    assert "REDIS_DURABILITY" in caplog.text and "appendfsync=everysec" in caplog.text


def _wait(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_restarted_worker_reads_its_own_pending_first(pipe):
    w = pipe.workers[0]
    tid = publish(pipe, 1)
    # delivered to the worker's stable name before it "died": only it holds the entry
    assert pipe.client.xreadgroup(streams.GROUP, w.name, {streams.STREAM: ">"})
    w.start()
    _wait(lambda: tid in results(pipe))
    assert w.term() == 0
    consumers = pipe.client.xinfo_consumers(streams.STREAM, streams.GROUP)
    assert [(c["name"], c["pending"]) for c in consumers] == [(w.name, 0)]
    assert len(pipe.exchange_orders()) == 1


def test_sigterm_finishes_current_intent_and_notifies_systemd(pipe, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    w = pipe.workers[0]
    w.env["NOTIFY_SOCKET"] = sock_path
    pipe.fault(delay_ms=1500)  # every exchange answer is slow
    w.start()
    assert sock.recv(100) == b"READY=1"
    tid = publish(pipe, 1)
    _wait(lambda: pipe.stats().get("orders_accepted", 0) == 1)
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
    w.args = ["--block-ms", "5500", "--pel-interval", "30", "--exchange-timeout", "2"]
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


def test_a_worker_started_while_redis_is_down_waits_for_it(pipe, redis_server):
    """CI caught it: a worker restarted while Redis restarted died of a traceback in its first
    read (CONFIG GET for the durability check). Its start-up reads wait the outage out the way
    its loop does - one line per retry - and then it serves what was published."""
    w = pipe.workers[0]
    tid = publish(pipe, 1)
    redis_server.stop()
    try:
        w.start()
        time.sleep(1.5)
        assert w.proc is not None and w.proc.poll() is None, "the worker died of the outage"
    finally:
        redis_server.start()
    _wait(lambda: tid in results(pipe))
    assert w.term() == 0
    text = w.log_path.read_text()
    assert "Traceback" not in text
    waits = [
        line for line in text.splitlines() if "REDIS_UNAVAILABLE" in line and "at=start" in line
    ]
    assert waits, text[-2000:]
    assert results(pipe)[tid]["status"] == "order_placed"
