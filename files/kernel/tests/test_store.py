"""admit on a real redis-server: the state gates on Redis's clock, the decision record, and what
happens when the state is corrupted or foreign. Time is moved by writing the state relative to
the server's TIME, never by sleeping."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from decimal import Decimal
from typing import Any

import pytest
import redis
from helpers import config, fields, valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from core_kernel import gates
from core_kernel.gates import GateVerdict, Market, Reason
from core_kernel.mode import TradingMode
from core_kernel.store import KernelStore, StateError

LAST = "quantum:kernel:last_trade:ETHUSDT"
TRADES = "quantum:kernel:trades"


def make(client: redis.Redis, mode: TradingMode = TradingMode.TESTNET, **cfg: Any) -> KernelStore:
    return KernelStore(client, config(**cfg), mode)


def traded_ago(client: redis.Redis, store: KernelStore, ms: int, symbol: str = "ETHUSDT") -> None:
    """A trade on ``symbol`` ``ms`` ago by Redis's clock (as admit.lua would have recorded it)."""
    stamp = store.server_time_ms() - ms
    client.set(store.last_trade_key(symbol), stamp)
    client.zadd(TRADES, {f"{symbol}:seed:{stamp}:{ms}": stamp})


def test_admit_records_on_the_server_clock_and_cooldown_applies(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    before = store.server_time_ms()
    first = store.admit(valid(trace_id="a"))
    assert first.verdict is GateVerdict.PASS and first.replayed is False
    stamp = int(redis_client.get(LAST))
    assert before <= stamp <= store.server_time_ms()
    redis_client.flushall()
    traded_ago(redis_client, store, 299_000)
    held = store.admit(valid(trace_id="b"))
    assert held.reasons == (Reason.COOLDOWN,)
    assert Decimal(299) <= held.context["seconds_since_last_trade"] < Decimal(300)
    redis_client.flushall()
    traded_ago(redis_client, store, 300_000)  # exactly MIN_HOLD_SECONDS (or more) ago: passes
    assert store.admit(valid(trace_id="c")).verdict is GateVerdict.PASS


def test_a_trade_stamped_in_the_future_is_a_zero_not_negative_cooldown(
    redis_client: redis.Redis,
) -> None:
    # The one clamp lives in admit.lua: elapsed = max(0, now - last).
    store = make(redis_client, MIN_HOLD_SECONDS=0, MAX_TRADES_10MIN=100)
    redis_client.set(LAST, store.server_time_ms() + 5_000)
    d = store.admit(valid(trace_id="f"))
    assert d.verdict is GateVerdict.PASS
    assert d.context["seconds_since_last_trade"] == 0
    strict = make(redis_client, MAX_TRADES_10MIN=100)
    redis_client.set(LAST, strict.server_time_ms() + 5_000)
    assert strict.admit(valid(trace_id="f2")).reasons == (Reason.COOLDOWN,)


def test_client_order_id_is_computed_once_and_stored_with_the_decision(
    redis_client: redis.Redis,
) -> None:
    store = make(redis_client)
    first = store.admit(valid(trace_id="dup"))
    again = store.admit(valid(trace_id="dup"))
    assert again.replayed is True and again.verdict is GateVerdict.PASS
    assert redis_client.zcard(TRADES) == 1
    assert first.client_order_id == again.client_order_id == "dup"
    assert first.trace_id == "dup"
    stored = redis_client.get("quantum:dedup:order:dup")
    assert stored.startswith("k1|P|") and stored.endswith("|dup")
    assert 86300 < redis_client.ttl("quantum:dedup:order:dup") <= 86400
    long_id = "L" * 50
    d = store.admit(valid(trace_id=long_id, symbol="BTCUSDT"))
    assert d.client_order_id is not None and d.client_order_id.startswith("qk-")
    assert len(d.client_order_id) == 35


def test_held_intent_stays_held_on_replay(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    traded_ago(redis_client, store, 1_000)
    held = store.admit(valid(trace_id="h"))
    assert held.reasons == (Reason.COOLDOWN,)
    redis_client.delete(LAST)  # cooldown long over
    replay = store.admit(valid(trace_id="h"))
    assert replay.replayed
    assert (replay.verdict, replay.reasons) == (GateVerdict.HOLD, (Reason.COOLDOWN,))


def test_rate_window_on_the_server_clock(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    for i, sym in enumerate(["AUSDT", "BUSDT", "CUSDT"]):
        assert store.admit(valid(symbol=sym, trace_id=f"r{i}")).verdict is GateVerdict.PASS
    assert store.admit(valid(symbol="DUSDT", trace_id="r3")).reasons == (Reason.RATE_LIMIT,)
    # the same three trades 600 s ago (by Redis's clock) have left the window
    now = store.server_time_ms()
    redis_client.delete(TRADES)
    redis_client.zadd(TRADES, {f"old{i}": now - 600_000 - i for i in range(3)})
    assert store.admit(valid(symbol="DUSDT", trace_id="r4")).verdict is GateVerdict.PASS
    assert redis_client.zcard(TRADES) == 1  # trimmed to the window


def test_trades_left_in_the_set_outside_the_window_are_never_counted(
    redis_client: redis.Redis,
) -> None:
    # Members older than the window (left by a writer that does not trim) are never counted.
    store = make(redis_client, MIN_HOLD_SECONDS=0)
    now = store.server_time_ms()
    redis_client.zadd(TRADES, {f"old{i}": now - 600_000 - i for i in range(5)})
    redis_client.set(LAST, now)  # this symbol's last trade: this second (usually)
    for i in range(3):
        d = store.admit(valid(trace_id=f"w{i}"))
        assert d.verdict is GateVerdict.PASS, d
        assert d.context["trades_in_window"] == i
    assert store.admit(valid(trace_id="w3")).reasons == (Reason.RATE_LIMIT,)


def test_the_gate_line_is_written_at_its_level(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # GATE_AUDIT (LIVE's would-be hold) is a WARNING: written with INFO off; GATE_HOLD / PASS
    # are INFO: not written then, written with INFO on.
    small = {"qty": Decimal("0.001")}  # MIN_NOTIONAL
    live, testnet = make(redis_client, TradingMode.LIVE), make(redis_client)
    with caplog.at_level(logging.WARNING, logger="core_kernel.gates"):
        assert live.admit(valid(trace_id="lg1", **small)).verdict is GateVerdict.PASS
        assert testnet.admit(valid(trace_id="lg2", symbol="BTCUSDT", **small)).verdict is (
            GateVerdict.HOLD
        )
    assert [r.getMessage().split()[0] for r in caplog.records] == ["GATE_AUDIT"]
    assert "trace_id=lg1" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="core_kernel.gates"):
        testnet.admit(valid(trace_id="lg3", symbol="XRPUSDT", **small))
    assert [r.getMessage().split()[0] for r in caplog.records] == ["GATE_HOLD"]


def test_intent_older_than_max_age_is_expired_and_stored_held(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    now = store.server_time_ms()
    young = store.admit(valid(trace_id="y"), entry_id=f"{now - 1000}-0")
    assert young.verdict is GateVerdict.PASS
    assert 1000 <= young.context["intent_age_ms"] < 60_000
    old = store.admit(valid(trace_id="o", symbol="BTCUSDT"), entry_id=f"{now - 180_001}-7")
    assert (old.verdict, old.reasons) == (GateVerdict.HOLD, (Reason.INTENT_EXPIRED,))
    assert not redis_client.exists(store.last_trade_key("BTCUSDT"))  # nothing recorded
    # LIVE audits the economic gates, never the age
    live = make(redis_client, TradingMode.LIVE)
    exp = live.admit(valid(trace_id="o2", symbol="SOLUSDT"), entry_id=f"{now - 10**7}-0")
    assert exp.verdict is GateVerdict.HOLD and Reason.INTENT_EXPIRED in exp.reasons
    assert store.intent_expired(f"{now - 180_001}-0") is True
    assert store.intent_expired(f"{store.server_time_ms()}-0") is False
    assert store.intent_expired("garbage") is True
    bad = store.admit(valid(trace_id="e"), entry_id="12-x")
    assert bad.context["invalid_fields"] == {"entry_id": "not a stream entry id"}


@pytest.mark.parametrize(
    ("key", "setup", "reason"),
    [
        (LAST, lambda c: c.set(LAST, "abc"), "not integer milliseconds"),
        (LAST, lambda c: c.set(LAST, "1.5"), "not integer milliseconds"),
        (LAST, lambda c: c.set(LAST, " 17"), "not integer milliseconds"),
        (LAST, lambda c: c.set(LAST, "1" * 16), "not integer milliseconds"),
        (LAST, lambda c: c.hset(LAST, "a", "1"), "wrong type"),
        (LAST, lambda c: c.rpush(LAST, "1"), "wrong type"),
        (TRADES, lambda c: c.set(TRADES, "3"), "wrong type"),
        (TRADES, lambda c: c.hset(TRADES, "a", "1"), "wrong type"),
    ],
)
@pytest.mark.parametrize("mode", list(TradingMode))
def test_corrupted_state_is_unavailable_naming_the_key_and_left_alone(
    redis_client: redis.Redis, key: str, setup: Any, reason: str, mode: TradingMode
) -> None:
    setup(redis_client)
    before = redis_client.dump(key)
    store = make(redis_client, mode)
    for door in (
        lambda: store.admit(valid(trace_id="c1")),
        lambda: store.admit_mapping(fields(trace_id="c1")),
        lambda: store.evaluate(valid(trace_id="c1")),
    ):
        d = door()
        assert (d.verdict, d.reasons) == (GateVerdict.HOLD, (Reason.STATE_UNAVAILABLE,))
        assert (d.context["state_key"], d.context["state_error"]) == (key, reason)
        assert d.replayed is False
    assert redis_client.dump(key) == before
    assert not redis_client.exists("quantum:dedup:order:c1")  # no decision on unknown state
    with pytest.raises(StateError) as info:
        store.record_trade("ETHUSDT")
    assert info.value.key == key
    assert redis_client.dump(key) == before


@pytest.mark.parametrize(
    "setup",
    [
        lambda c, k: c.set(k, "1"),
        lambda c, k: c.set(k, "P|1|2|3"),  # the first wave's format
        lambda c, k: c.set(k, "k1|P|1|2|3||"),
        lambda c, k: c.set(k, b"\xff\xfe"),
        lambda c, k: c.hset(k, "verdict", "PASS"),
        lambda c, k: c.sadd(k, "x"),
    ],
)
def test_foreign_order_key_value_is_a_duplicate_hold_never_overwritten(
    redis_client: redis.Redis, setup: Any
) -> None:
    key = "quantum:dedup:order:old"
    setup(redis_client, key)
    before = redis_client.dump(key)
    for mode in TradingMode:
        d = make(redis_client, mode).admit(valid(trace_id="old"))
        assert (d.verdict, d.primary, d.replayed) == (
            GateVerdict.HOLD,
            Reason.DUPLICATE_ORDER,
            True,
        )
        assert d.context["state_key"] == key
        assert d.client_order_id == "old"
    assert redis_client.dump(key) == before
    assert not redis_client.exists(TRADES)


@pytest.mark.parametrize(
    ("key", "corrupt"),
    [
        (LAST, lambda c: c.set(LAST, "soon")),
        (LAST, lambda c: c.hset(LAST, "a", "1")),
        (TRADES, lambda c: c.set(TRADES, "3")),
    ],
)
def test_stored_decision_comes_back_before_a_state_read_fails(
    redis_client: redis.Redis, key: str, corrupt: Any
) -> None:
    """The dedup key answers first: a replay (or a foreign claim) wins over unreadable state."""
    store = make(redis_client)
    first = store.admit(valid(trace_id="st"))
    assert first.verdict is GateVerdict.PASS
    redis_client.delete(key)
    corrupt(redis_client)
    before = redis_client.dump(key)
    again = store.admit(valid(trace_id="st"))
    assert (again.verdict, again.replayed, again.client_order_id) == (GateVerdict.PASS, True, "st")
    redis_client.sadd("quantum:dedup:order:other", "x")
    other = store.admit(valid(trace_id="other"))
    assert (other.verdict, other.primary) == (GateVerdict.HOLD, Reason.DUPLICATE_ORDER)
    fresh = store.admit(valid(trace_id="new"))
    assert (fresh.primary, fresh.context["state_key"]) == (Reason.STATE_UNAVAILABLE, key)
    assert redis_client.dump(key) == before
    assert not redis_client.exists("quantum:dedup:order:new")


def test_a_replay_writes_nothing_to_the_orders_in_flight(redis_client: redis.Redis) -> None:
    s = make(redis_client, MIN_HOLD_SECONDS=0, MAX_TRADES_10MIN=10**6, MAX_POSITION_USD="100")
    market = Market(None, Decimal(0), Decimal(0))
    assert s.admit(valid(trace_id="f1"), market=market).verdict is GateVerdict.PASS
    # someone's record expired a millisecond ago: a fresh admit drops it, a replay leaves it
    now = s.server_time_ms()
    redis_client.hset(s.inflight_key, "ETHUSDT:old", f"1000000|{now - 1}")
    redis_client.hincrby(s.inflight_key, "#ETHUSDT", 1000000)
    redis_client.hincrby(s.inflight_key, "#", 1000000)
    redis_client.zadd(s.inflight_expiry_key, {"ETHUSDT:old": now - 1})
    before = (redis_client.dump(s.inflight_key), redis_client.dump(s.inflight_expiry_key))
    again = s.admit(valid(trace_id="f1"), market=market)
    assert (again.verdict, again.replayed) == (GateVerdict.PASS, True)
    assert (redis_client.dump(s.inflight_key), redis_client.dump(s.inflight_expiry_key)) == before
    # in-flight sums the kernel did not write: the replay still answers its stored decision
    redis_client.hset(s.inflight_key, "#ETHUSDT", "lots")
    assert s.admit(valid(trace_id="f1"), market=market).replayed
    fresh = s.admit(valid(trace_id="f2"), market=market)
    assert (fresh.primary, fresh.context["state_key"]) == (Reason.STATE_UNAVAILABLE, s.inflight_key)


def test_live_records_passes_and_audits(redis_client: redis.Redis) -> None:
    store = make(redis_client, TradingMode.LIVE)
    assert store.admit(valid(trace_id="l1")).verdict is GateVerdict.PASS
    second = store.admit(valid(trace_id="l2"))
    assert (second.verdict, second.reasons) == (GateVerdict.PASS, (Reason.COOLDOWN,))
    assert not second.enforced
    bad = store.admit_mapping(fields(trace_id="l3", qty="NaN"))
    assert bad.verdict is GateVerdict.HOLD


def test_reduce_only_exit_not_blocked_not_recorded_and_blind_to_state(
    redis_client: redis.Redis,
) -> None:
    store = make(redis_client)
    store.record_trade("ETHUSDT")
    d = store.admit(valid(trace_id="x", reduce_only=True))
    assert d.verdict is GateVerdict.PASS
    assert redis_client.zcard(TRADES) == 1
    redis_client.set(LAST, "garbage")  # an exit never reads the entry gates' state
    assert store.admit(valid(trace_id="x2", reduce_only=True)).verdict is GateVerdict.PASS


def test_missing_trace_id_holds_and_writes_nothing(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    d = store.admit(valid(trace_id=None))
    assert d.verdict is GateVerdict.HOLD
    assert "trace_id" in d.context["invalid_fields"]
    m = store.admit_mapping(fields(trace_id=None))
    assert m.context["invalid_fields"] == {"trace_id": "missing"}
    assert redis_client.dbsize() == 0


def test_economic_hold_is_stored(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    assert store.admit(valid(trace_id="m", model="XGBoost")).verdict is GateVerdict.HOLD
    assert redis_client.get("quantum:dedup:order:m").startswith("k1|H|")
    assert not redis_client.exists(TRADES)


def test_redis_down_is_state_unavailable_in_every_mode() -> None:
    # No retries: redis-py 8 retries with backoff by default, seconds per call when down.
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    for mode in TradingMode:
        store = KernelStore(client, config(), mode)
        d = store.admit(valid(trace_id="z"))
        assert (d.verdict, d.reasons) == (GateVerdict.HOLD, (Reason.STATE_UNAVAILABLE,))
        assert d.client_order_id == "z"
        assert store.evaluate(valid()).reasons == (Reason.STATE_UNAVAILABLE,)


def test_key_prefix_isolates(redis_client: redis.Redis) -> None:
    a = KernelStore(redis_client, config(), TradingMode.TESTNET, key_prefix="quantum:proof:a:")
    b = KernelStore(redis_client, config(), TradingMode.TESTNET, key_prefix="quantum:proof:b:")
    assert a.admit(valid(trace_id="same")).verdict is GateVerdict.PASS
    assert b.admit(valid(trace_id="same")).replayed is False
    assert not redis_client.exists(TRADES)


def test_two_step_api_uses_the_same_script(redis_client: redis.Redis) -> None:
    store = make(redis_client)
    assert store.evaluate(valid()).verdict is GateVerdict.PASS
    assert redis_client.dbsize() == 0  # read-only
    assert store.record_trade("ETHUSDT") == 1
    assert store.evaluate(valid()).reasons == (Reason.COOLDOWN,)


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
    assert redis.Redis.from_url(redis_url).zcard(TRADES) == 3


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    since_ms=st.one_of(st.none(), st.integers(min_value=2_000, max_value=700_000)),
    trades=st.integers(min_value=0, max_value=5),
    mode=st.sampled_from(list(TradingMode)),
    model=st.sampled_from(["NHiTS", "XGBoost"]),
    reduce_only=st.booleans(),
)
def test_script_outcome_matches_the_what_if_mirror(
    redis_client: redis.Redis,
    since_ms: int | None,
    trades: int,
    mode: TradingMode,
    model: str,
    reduce_only: bool,
) -> None:
    """admit.lua decides the state gates; the CLI's offline what-if must say the same.

    Elapsed times are kept >= 2 s from the threshold's edge so the few ms between writing the
    state and the script's TIME cannot cross it.
    """
    redis_client.flushall()
    store = make(redis_client, mode)
    now = store.server_time_ms()
    if since_ms is not None:
        redis_client.set(LAST, now - since_ms)
    if trades:
        redis_client.zadd(TRADES, {f"m{i}": now - 1000 * (i + 1) for i in range(trades)})
    intent = valid(model=model, trace_id="p", reduce_only=reduce_only)
    got = store.admit(intent)
    if since_ms is not None and abs(since_ms - 300_000) < 2_000:
        return
    expected = gates.evaluate(
        intent,
        store.params,
        mode,
        gates.what_if_state(
            None if since_ms is None else Decimal(since_ms) / 1000, trades, store.params
        ),
    )
    assert (got.verdict, got.reasons) == (expected.verdict, expected.reasons)


@pytest.mark.parametrize("limits", [{}, {"MAX_POSITION_USD": "1000"}], ids=["4-keys", "6-keys"])
def test_script_cache_flush_is_survived(redis_client: redis.Redis, limits: dict[str, str]) -> None:
    # Both argument shapes: with a limit on exchange data admit passes the in-flight keys too.
    store = make(redis_client, **limits)
    market = Market(Decimal(3500), Decimal(0), Decimal(0)) if limits else None
    assert store.admit(valid(trace_id="s1"), market=market).verdict is GateVerdict.PASS
    redis_client.script_flush()
    again = store.admit(valid(trace_id="s2", symbol="BTCUSDT"), market=market)
    assert again.verdict is GateVerdict.PASS and again.replayed is False
    assert bool(redis_client.exists(store.inflight_key)) == bool(limits)


def test_limits_input_without_the_inflight_keys_is_refused_and_writes_nothing(
    redis_client: redis.Redis,
) -> None:
    # The script reads the in-flight keys only when given; a limits input that arrives without
    # them (a caller out of step with the script) is unreadable state, never a silent pass.
    store = make(redis_client, MAX_POSITION_USD="1000")
    store.admit(valid(trace_id="warm"), market=Market(Decimal(3500), Decimal(0), Decimal(0)))
    redis_client.flushall()
    reply = redis_client.evalsha(
        store._admit_sha,
        4,
        store.order_key("k4"),
        store.last_trade_key("ETHUSDT"),
        store.trades_key,
        store.state_key,
        "7",
        "",
        "ETHUSDT:k4",
        "k4",
        ";0|0|35000000|1000000000|-1|60000",
    )
    assert reply == "ACTIVE;!KEYS|in-flight keys not given"
    assert redis_client.keys("*") == []


@pytest.mark.parametrize("protocol", [2, 3])
def test_admit_with_undecoded_client(redis_url: str, protocol: int) -> None:
    client = redis.Redis.from_url(redis_url, protocol=protocol)  # bytes replies
    store = KernelStore(client, config(), TradingMode.TESTNET)
    assert store.admit(valid(trace_id="b1")).verdict is GateVerdict.PASS
    replay = store.admit(valid(trace_id="b1"))
    assert replay.replayed and replay.verdict is GateVerdict.PASS
    assert replay.client_order_id == "b1"


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
    assert redis.Redis.from_url(redis_url).zcard(TRADES) == 3
