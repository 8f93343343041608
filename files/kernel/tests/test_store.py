from __future__ import annotations

import logging
import multiprocessing
import threading
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
import redis
from helpers import config, valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from core_kernel import store as store_module
from core_kernel.gates import GateVerdict, Intent, Reason, Situation, evaluate
from core_kernel.mode import TradingMode
from core_kernel.prefilter import certify
from core_kernel.store import KernelStore


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(client: redis.Redis, mode: TradingMode = TradingMode.TESTNET, **cfg: Any) -> Any:
    clock = Clock()
    return KernelStore(client, config(**cfg), mode, clock=clock), clock


def test_admit_records_and_cooldown_applies(redis_client: redis.Redis) -> None:
    store, clock = make(redis_client)
    first = store.admit(valid(trace_id="a"))
    assert first.verdict is GateVerdict.PASS
    assert first.replayed is False
    assert redis_client.get("quantum:kernel:last_trade:ETHUSDT") == "1800000000000"
    clock.now += 299.999
    held = store.admit(valid(trace_id="b"))
    assert held.reasons == (Reason.COOLDOWN,)
    assert held.context["seconds_since_last_trade"] == Decimal("299.999")
    clock.now += 0.001  # exactly MIN_HOLD_SECONDS later: inclusive
    assert store.admit(valid(trace_id="c")).verdict is GateVerdict.PASS


def test_trade_stamped_later_by_another_worker_is_not_a_negative_cooldown(
    redis_client: redis.Redis,
) -> None:
    # Two workers read their clocks before their scripts run; the one that reads later can record
    # first. With MIN_HOLD_SECONDS=0 the earlier reader must still pass, not see -1 ms < 0.
    ahead, ahead_clock = make(redis_client, MIN_HOLD_SECONDS=0, MAX_TRADES_10MIN=100)
    behind = KernelStore(
        redis_client,
        config(MIN_HOLD_SECONDS=0, MAX_TRADES_10MIN=100),
        TradingMode.TESTNET,
        clock=Clock(ahead_clock.now - 0.005),
    )
    assert ahead.admit(valid(trace_id="later-stamp")).verdict is GateVerdict.PASS
    decision = behind.admit(valid(trace_id="earlier-stamp"))
    assert decision.verdict is GateVerdict.PASS, decision.reasons
    assert decision.context["seconds_since_last_trade"] == Decimal(0)
    # With a real cooldown the clamp still holds the second trade.
    held = KernelStore(
        redis_client,
        config(MAX_TRADES_10MIN=100),
        TradingMode.TESTNET,
        clock=Clock(ahead_clock.now - 0.005),
    ).admit(valid(trace_id="earlier-stamp-2"))
    assert held.reasons == (Reason.COOLDOWN,)


def test_redelivered_intent_replays_without_recording(redis_client: redis.Redis) -> None:
    store, clock = make(redis_client)
    first = store.admit(valid(trace_id="dup"))
    clock.now += 1
    again = store.admit(valid(trace_id="dup"))
    assert again.replayed is True
    assert again.verdict is GateVerdict.PASS
    assert redis_client.zcard("quantum:kernel:trades") == 1
    assert first.context["client_order_id"] == again.context["client_order_id"] == "dup"
    ttl = redis_client.ttl("quantum:dedup:order:dup")
    assert 86300 < ttl <= 86400


def test_held_intent_stays_held_on_replay(redis_client: redis.Redis) -> None:
    store, clock = make(redis_client)
    store.record_trade("ETHUSDT")
    held = store.admit(valid(trace_id="h"))
    assert held.reasons == (Reason.COOLDOWN,)
    clock.now += 10_000  # cooldown long over
    replay = store.admit(valid(trace_id="h"))
    assert replay.replayed
    assert replay.verdict is GateVerdict.HOLD
    assert replay.reasons == (Reason.COOLDOWN,)


def test_foreign_order_key_value_is_a_duplicate_hold(redis_client: redis.Redis) -> None:
    store, _ = make(redis_client)
    redis_client.set("quantum:dedup:order:old", "1", ex=100)
    d = store.admit(valid(trace_id="old"))
    assert d.verdict is GateVerdict.HOLD
    assert d.replayed
    assert d.primary is Reason.DUPLICATE_ORDER


def test_rate_window_slides(redis_client: redis.Redis) -> None:
    store, clock = make(redis_client)
    for i, sym in enumerate(["AUSDT", "BUSDT", "CUSDT"]):
        assert store.admit(valid(symbol=sym, trace_id=f"r{i}")).verdict is GateVerdict.PASS
        clock.now += 1
    assert store.admit(valid(symbol="DUSDT", trace_id="r3")).reasons == (Reason.RATE_LIMIT,)
    clock.now += 597  # first trade now exactly 600 s old: out of the window
    assert store.admit(valid(symbol="DUSDT", trace_id="r4")).verdict is GateVerdict.PASS
    assert store.situation("EUSDT").trades_in_window == 3


def test_live_records_passes_and_audits(redis_client: redis.Redis) -> None:
    store, _ = make(redis_client, TradingMode.LIVE)
    assert store.admit(valid(trace_id="l1")).verdict is GateVerdict.PASS
    second = store.admit(valid(trace_id="l2"))
    assert second.verdict is GateVerdict.PASS
    assert second.reasons == (Reason.COOLDOWN,)
    assert not second.enforced
    bad = store.admit(valid(trace_id="l3", qty="NaN"))
    assert bad.verdict is GateVerdict.HOLD


def test_reduce_only_exit_not_blocked_and_not_recorded(redis_client: redis.Redis) -> None:
    store, _ = make(redis_client)
    store.record_trade("ETHUSDT")
    d = store.admit(valid(trace_id="x", reduce_only=True))
    assert d.verdict is GateVerdict.PASS
    assert redis_client.zcard("quantum:kernel:trades") == 1


def test_missing_trace_id_holds(redis_client: redis.Redis) -> None:
    store, _ = make(redis_client)
    d = store.admit(valid(trace_id=""))
    assert d.verdict is GateVerdict.HOLD
    assert "trace_id" in d.context["invalid_fields"]
    assert redis_client.dbsize() == 0


def test_invalid_input_hold_is_stored(redis_client: redis.Redis) -> None:
    store, _ = make(redis_client)
    assert store.admit(valid(trace_id="bad", sl=9999)).primary is Reason.INVALID_INPUT
    assert redis_client.get(
        "quantum:dedup:order:bad",
    ).startswith("H|")


def test_redis_down_is_state_unavailable() -> None:
    # No retries: redis-py 8 retries with backoff by default, seconds per call when down.
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    store = KernelStore(client, config(), TradingMode.TESTNET)
    d = store.admit(valid(trace_id="z"))
    assert d.verdict is GateVerdict.HOLD
    assert d.reasons == (Reason.STATE_UNAVAILABLE,)
    live = KernelStore(client, config(), TradingMode.LIVE).admit(valid(trace_id="z"))
    assert live.verdict is GateVerdict.PASS
    assert live.reasons == (Reason.STATE_UNAVAILABLE,)
    assert live.context["client_order_id"] == "z"  # a LIVE pass can still be placed
    assert store.evaluate(valid()).reasons == (Reason.STATE_UNAVAILABLE,)


def test_key_prefix_isolates(redis_client: redis.Redis) -> None:
    a = KernelStore(redis_client, config(), TradingMode.TESTNET, key_prefix="quantum:proof:a:")
    b = KernelStore(redis_client, config(), TradingMode.TESTNET, key_prefix="quantum:proof:b:")
    assert a.admit(valid(trace_id="same")).verdict is GateVerdict.PASS
    assert b.admit(valid(trace_id="same")).replayed is False
    assert not redis_client.exists("quantum:kernel:trades")


def test_two_step_api(redis_client: redis.Redis) -> None:
    store, _clock = make(redis_client)
    assert store.evaluate(valid()).verdict is GateVerdict.PASS
    assert store.record_trade(" ETHUSDT ") == 1
    assert store.evaluate(valid()).reasons == (Reason.COOLDOWN,)
    with pytest.raises(ValueError, match="symbol"):
        store.record_trade(" ")


@pytest.mark.parametrize("workers", [20])
def test_concurrent_admits_never_exceed_the_rate_limit(redis_url: str, workers: int) -> None:
    """20 workers, each with its own connection, admit distinct symbols at the same moment."""
    results: list[GateVerdict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(workers)

    def worker(n: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = KernelStore(client, config(), TradingMode.TESTNET)
        barrier.wait()
        for k in range(5):
            d = store.admit(valid(symbol=f"S{n}K{k}USDT", trace_id=f"w{n}-{k}"))
            with lock:
                results.append(d.verdict)
        client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == workers * 5
    assert results.count(GateVerdict.PASS) == 3
    check = redis.Redis.from_url(redis_url)
    assert check.zcard("quantum:kernel:trades") == 3


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    since_ms=st.one_of(st.none(), st.integers(min_value=0, max_value=700_000)),
    trades=st.integers(min_value=0, max_value=5),
    mode=st.sampled_from(list(TradingMode)),
    model=st.sampled_from(["NHiTS", "XGBoost"]),
    reduce_only=st.booleans(),
    kind=st.sampled_from(["decimal", "float", "text"]),
)
def test_lua_state_gates_agree_with_pure_evaluate(
    redis_client: redis.Redis,
    since_ms: int | None,
    trades: int,
    mode: TradingMode,
    model: str,
    reduce_only: bool,
    kind: str,
) -> None:
    redis_client.flushdb()
    store, clock = make(redis_client, mode)
    now_ms = int(clock.now * 1000)
    for i in range(trades):
        redis_client.zadd("quantum:kernel:trades", {f"m{i}": now_ms - 1000 * (i + 1)})
    if since_ms is not None:
        redis_client.set("quantum:kernel:last_trade:ETHUSDT", now_ms - since_ms)
    # Decimals take the exact-first path; floats and text the float filter's early send.
    intent = as_kind(valid(trace_id="p", model=model, reduce_only=reduce_only), kind)
    expected = evaluate(
        intent,
        Situation(None if since_ms is None else Decimal(since_ms) / 1000, trades),
        store.params,
        mode,
    )
    got = store.admit(intent)
    assert got.verdict is expected.verdict
    assert got.reasons == expected.reasons
    assert "recomputed_verdict" not in got.context
    recorded = redis_client.zcard("quantum:kernel:trades") == trades + 1
    assert recorded is (got.verdict is GateVerdict.PASS and not reduce_only)


def as_kind(intent: Intent, kind: str) -> Intent:
    """The same intent with its numbers as Decimals, floats or text."""
    if kind == "decimal":
        return intent
    convert = float if kind == "float" else str
    numbers = ("qty", "price", "expected_move_usd", "tp", "sl")
    return replace(intent, **{k: convert(getattr(intent, k)) for k in numbers})


def test_float_and_text_intents_take_the_early_send_and_decide_the_same(
    redis_client: redis.Redis,
) -> None:
    store, clock = make(redis_client)
    first = store.admit(as_kind(valid(trace_id="e1", tp=Decimal(3600)), "float"))
    assert certify(as_kind(valid(tp=Decimal(3600)), "float"), store.params, store.mode)
    assert first.verdict is GateVerdict.PASS
    assert first.context["client_order_id"] == "e1"
    assert first.context["r"] == Decimal("2.85714285714")
    clock.now += 1
    held = store.admit(as_kind(valid(trace_id="e2", tp=Decimal(3600)), "text"))
    assert held.reasons == (Reason.COOLDOWN,)
    assert held.context["seconds_since_last_trade"] == Decimal("1.000")
    replay = store.admit(as_kind(valid(trace_id="e1", tp=Decimal(3600)), "float"))
    assert replay.replayed and replay.verdict is GateVerdict.PASS
    assert redis_client.zcard("quantum:kernel:trades") == 1


@pytest.mark.parametrize(("lie", "recorded"), [(True, 1), (False, 0)])
def test_a_filter_that_disagrees_with_the_exact_gates_fails_closed(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    lie: bool,
    recorded: int,
) -> None:
    """If the float filter ever certified the wrong bit, admit must still never place it."""
    store, _ = make(redis_client)
    intent = as_kind(valid(trace_id="lie", tp=Decimal(3600), model="XGBoost"), "float")
    if not lie:  # a valid trade the filter wrongly calls a failure
        intent = replace(intent, model="NHiTS")
    monkeypatch.setattr(store_module, "certify", lambda *_: (lie, "ETHUSDT"))
    with caplog.at_level(logging.ERROR, logger="core_kernel.gates"):
        decision = store.admit(intent)
    assert decision.verdict is GateVerdict.HOLD
    assert "GATE_INCONSISTENT" in caplog.text
    assert redis_client.get("quantum:dedup:order:lie").startswith("H|")
    assert redis_client.ttl("quantum:dedup:order:lie") > 86000
    # a trade the lie let the script record stays counted: it can only hold back later ones
    assert redis_client.zcard("quantum:kernel:trades") == recorded
    monkeypatch.undo()
    replay = store.admit(intent)
    assert replay.replayed and replay.verdict is GateVerdict.HOLD


def test_a_forked_child_never_shares_the_parents_admit_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = KernelStore(client, config(MAX_TRADES_10MIN=100), TradingMode.TESTNET)
    assert store.admit(valid(trace_id="parent-1", symbol="AUSDT")).verdict is GateVerdict.PASS
    parent_conn = store._connection()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:
        same = store._connection() is parent_conn
        verdict = store.admit(valid(trace_id="child-1", symbol="BUSDT")).verdict.value
        out.put((same, verdict))

    proc = ctx.Process(target=child)
    proc.start()
    same, verdict = out.get(timeout=30)
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert (same, verdict) == (False, "PASS")
    # the parent's connection is untouched: no reply of the child's ever lands on it
    assert store._connection() is parent_conn
    assert store.admit(valid(trace_id="parent-2", symbol="CUSDT")).verdict is GateVerdict.PASS
    store.close()
    assert not parent_conn.is_connected
    assert store.admit(valid(trace_id="parent-3", symbol="DUSDT")).verdict is GateVerdict.PASS
    client.close()


def test_script_cache_flush_is_survived(redis_client: redis.Redis) -> None:
    store, _ = make(redis_client)
    assert store.admit(valid(trace_id="s1")).verdict is GateVerdict.PASS
    redis_client.script_flush()
    again = store.admit(valid(trace_id="s2", symbol="BTCUSDT"))
    assert again.verdict is GateVerdict.PASS
    assert again.replayed is False


def test_killed_connection_is_unavailable_once_then_recovers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = KernelStore(client, config(), TradingMode.TESTNET)
    assert store.admit(valid(trace_id="k1")).verdict is GateVerdict.PASS
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    first = store.admit(valid(trace_id="k2", symbol="BTCUSDT"))
    # either the dead socket is noticed on send (HOLD, nothing stored) or it reconnected
    assert first.reasons in ((Reason.STATE_UNAVAILABLE,), ())
    second = store.admit(valid(trace_id="k3", symbol="SOLUSDT"))
    assert second.verdict is GateVerdict.PASS
    assert second.replayed is False


@pytest.mark.parametrize("protocol", [2, 3])
def test_admit_with_undecoded_client(redis_url: str, protocol: int) -> None:
    client = redis.Redis.from_url(redis_url, protocol=protocol)  # bytes replies
    store = KernelStore(client, config(), TradingMode.TESTNET)
    assert store.admit(valid(trace_id="b1")).verdict is GateVerdict.PASS
    replay = store.admit(valid(trace_id="b1"))
    assert replay.replayed and replay.verdict is GateVerdict.PASS
    assert store.situation("ETHUSDT").trades_in_window == 1


def test_single_connection_client_takes_the_normal_path(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    store = KernelStore(client, config(), TradingMode.TESTNET)
    assert store.admit(valid(trace_id="sc")).verdict is GateVerdict.PASS
    client.close()


def _process_worker(redis_url: str, n: int, barrier: Any, out: Any) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = KernelStore(client, config(), TradingMode.TESTNET)
    barrier.wait(timeout=30)
    verdicts = [
        store.admit(valid(symbol=f"P{n}K{k}USDT", trace_id=f"p{n}-{k}")).verdict.value
        for k in range(3)
    ]
    out.put(verdicts)
    client.close()


def test_concurrent_admits_from_20_processes(redis_url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(20)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(redis_url, n, barrier, out)) for n in range(20)
    ]
    for p in procs:
        p.start()
    results = [v for _ in procs for v in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(results) == 60
    assert results.count("PASS") == 3
    assert redis.Redis.from_url(redis_url).zcard("quantum:kernel:trades") == 3
