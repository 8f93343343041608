"""Limits on exchange data (issue 14): PRICE_COLLAR and MAX_POSITION, through the real admit on a
real Redis, the orders in flight under concurrency, and the worker against the fake exchange
over HTTP (its marks, positions and failures switched by ``/_market`` and ``/_fault``)."""

from __future__ import annotations

import io
import json
import sys
import threading
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import config, control, valid

from core_kernel import cli, consume, gates, inflight, streams
from core_kernel.config import ConfigError, load_config
from core_kernel.exchange import from_config
from core_kernel.gates import GateVerdict, Market, Reason
from core_kernel.intent import parse_intent
from core_kernel.mode import TradingMode
from core_kernel.proof import run_proof
from core_kernel.store import KernelStore
from core_kernel.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent

FLAT = Market(Decimal(3500), Decimal(0), Decimal(0))
ON = {"PRICE_COLLAR_PCT": "5", "MAX_POSITION_USD": "1000", "MAX_GROSS_EXPOSURE_USD": "3000"}


def records(client: redis.Redis, s: KernelStore) -> dict[str, str]:
    """The in-flight records (without the running sums '#...')."""
    return {k: v for k, v in client.hgetall(s.inflight_key).items() if not k.startswith("#")}


def store(client: redis.Redis, mode: TradingMode = TradingMode.TESTNET, **env: Any) -> KernelStore:
    return KernelStore(client, config(MIN_HOLD_SECONDS=0, MAX_TRADES_10MIN=10**6, **env), mode)


# --- the gates -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "market", "expected"),
    [
        # the default intent: BUY 0.01 ETHUSDT at 3500, notional 35
        # |3500 - 3200| / 3200 = 9.375 % exactly; |3500 - 4000| / 4000 = 12.5 %
        ({"PRICE_COLLAR_PCT": "9.375"}, Market(Decimal(3200)), ()),  # inclusive
        ({"PRICE_COLLAR_PCT": "9.374"}, Market(Decimal(3200)), (Reason.PRICE_COLLAR,)),
        ({"PRICE_COLLAR_PCT": "12.5"}, Market(Decimal(4000)), ()),
        ({"PRICE_COLLAR_PCT": "12.49"}, Market(Decimal(4000)), (Reason.PRICE_COLLAR,)),
        ({"PRICE_COLLAR_PCT": ""}, None, ()),  # off: no data needed
        ({"MAX_POSITION_USD": "100"}, Market(None, Decimal(65), Decimal(0)), ()),  # 100 exactly
        ({"MAX_POSITION_USD": "100"}, Market(None, Decimal("65.01"), Decimal(0)), ("X",)),
        ({"MAX_GROSS_EXPOSURE_USD": "100"}, Market(None, Decimal(0), Decimal(65)), ()),
        ({"MAX_GROSS_EXPOSURE_USD": "100"}, Market(None, Decimal(0), Decimal(66)), ("X",)),
        ({"MAX_POSITION_USD": "", "MAX_GROSS_EXPOSURE_USD": ""}, None, ()),  # off
    ],
)
def test_limits_hold_entries_with_their_own_code(
    redis_client: redis.Redis,
    env: dict[str, str],
    market: Market | None,
    expected: tuple[Any, ...],
) -> None:
    want = tuple(Reason.MAX_POSITION if r == "X" else r for r in expected)
    decision = store(redis_client, **env).admit(valid(trace_id="g1"), market=market)
    assert decision.reasons == want
    assert decision.verdict is (GateVerdict.HOLD if want else GateVerdict.PASS)


def test_no_market_data_holds_when_enforcing_and_is_audited_in_live(
    redis_client: redis.Redis,
) -> None:
    held = store(redis_client, **ON).admit(valid(trace_id="n1"))
    assert held.verdict is GateVerdict.HOLD
    assert held.reasons == (Reason.PRICE_COLLAR, Reason.MAX_POSITION)
    assert held.context["mark_price_error"] == "no market data"
    assert held.context["position_error"] == "no position data"
    failed = Market(None, None, None, "mark_price unavailable: x", "positions unavailable: y")
    again = store(redis_client, **ON).admit(valid(trace_id="n2"), market=failed)
    assert again.context["mark_price_error"] == "mark_price unavailable: x"
    assert again.context["position_error"] == "positions unavailable: y"
    live = store(redis_client, TradingMode.LIVE, **ON).admit(valid(trace_id="n3"))
    assert live.verdict is GateVerdict.PASS
    assert live.reasons == (Reason.PRICE_COLLAR, Reason.MAX_POSITION)
    assert gates.log_event(live) == "GATE_AUDIT"


def test_reduce_only_exits_are_exempt(redis_client: redis.Redis) -> None:
    s = store(
        redis_client, PRICE_COLLAR_PCT="0.01", MAX_POSITION_USD="1", MAX_GROSS_EXPOSURE_USD="1"
    )
    exit_ = parse_intent(
        {"symbol": "ETHUSDT", "side": "SELL", "qty": "100", "price": "1", "reduce_only": True}
        | {"trace_id": "e1"}
    )
    decision = s.admit(exit_)  # no market data at all
    assert decision.verdict is GateVerdict.PASS and decision.reasons == ()
    assert records(redis_client, s) == {}  # an exit is never counted in flight
    bad = s.admit_mapping(
        {"symbol": "ETHUSDT", "side": "SELL", "qty": "1", "price": "-1", "reduce_only": True}
        | {"trace_id": "e2"}
    )
    assert bad.primary is Reason.INVALID_INPUT


# --- orders in flight ------------------------------------------------------------------------
def test_an_entry_in_flight_counts_until_released(redis_client: redis.Redis) -> None:
    s = store(redis_client, MAX_POSITION_USD="100")
    market = Market(None, Decimal(30), Decimal(30))
    first = s.admit(valid(trace_id="f1"), market=market)  # 30 + 35 = 65
    assert first.verdict is GateVerdict.PASS
    assert len(records(redis_client, s)) == 1
    second = s.admit(valid(trace_id="f2"), market=market)  # 30 + 35 in flight + 35 = 100
    assert second.verdict is GateVerdict.PASS
    third = s.admit(valid(trace_id="f3"), market=market)  # 135 > 100
    assert third.reasons == (Reason.MAX_POSITION,)
    assert third.context["inflight_position_usd"] == Decimal(70)
    # a held entry is not in flight; a replayed one is not counted twice
    assert len(records(redis_client, s)) == 2
    assert s.admit(valid(trace_id="f2"), market=market).replayed
    assert len(records(redis_client, s)) == 2
    # released: nothing was placed for f1 -> its room is free again
    assert inflight.release(
        redis_client, s.inflight_key, s.inflight_expiry_key, "ETHUSDT", "f1", None
    )
    assert s.admit(valid(trace_id="f4"), market=market).verdict is GateVerdict.PASS
    # another symbol counts against the gross limit only
    other = valid(trace_id="f5", symbol="BTCUSDT")
    assert s.admit(other, market=market).verdict is GateVerdict.PASS


def test_in_flight_records_expire_and_release_only_shortens(redis_client: redis.Redis) -> None:
    s = store(redis_client, MAX_POSITION_USD="100")
    market = Market(None, Decimal(0), Decimal(0))
    now = s.server_time_ms()
    # someone's 90 USD expired a millisecond ago: not counted, and dropped by the admit
    redis_client.hset(
        s.inflight_key,
        mapping={"ETHUSDT:old": f"90000000|{now - 1}", "#ETHUSDT": 90000000, "#": 90000000},
    )
    redis_client.zadd(s.inflight_expiry_key, {"ETHUSDT:old": now - 1})
    assert s.admit(valid(trace_id="x1"), market=market).verdict is GateVerdict.PASS
    assert not redis_client.hexists(s.inflight_key, "ETHUSDT:old")
    assert redis_client.hget(s.inflight_key, "#") == "35000000"  # only x1 now
    assert redis_client.zrange(s.inflight_expiry_key, 0, -1) == ["ETHUSDT:x1"]
    ttl = inflight.inflight_ttl_ms(s.config)
    _, expires = redis_client.hget(s.inflight_key, "ETHUSDT:x1").split("|")
    assert 0 < int(expires) - now <= ttl + 1000
    assert ttl == 30000 + 5000 + 2000 + 3000  # lease + recvWindow + margin + data age
    # settle after a fill: shorter, never longer
    inflight.release(redis_client, s.inflight_key, s.inflight_expiry_key, "ETHUSDT", "x1", 10)
    _, settled = redis_client.hget(s.inflight_key, "ETHUSDT:x1").split("|")
    assert int(settled) < int(expires)
    inflight.release(redis_client, s.inflight_key, s.inflight_expiry_key, "ETHUSDT", "x1", 10**9)
    assert redis_client.hget(s.inflight_key, "ETHUSDT:x1").split("|")[1] == settled
    assert not inflight.release(
        redis_client, s.inflight_key, s.inflight_expiry_key, "ETHUSDT", "nope", None
    )
    assert inflight.release(
        redis_client, s.inflight_key, s.inflight_expiry_key, "ETHUSDT", "x1", None
    )
    assert redis_client.hgetall(s.inflight_key) == {"#ETHUSDT": "0", "#": "0"}
    assert redis_client.zcard(s.inflight_expiry_key) == 0


def test_a_foreign_in_flight_record_is_state_unavailable(redis_client: redis.Redis) -> None:
    s = store(redis_client, MAX_POSITION_USD="100")
    redis_client.hset(s.inflight_key, "#ETHUSDT", "lots")
    decision = s.admit(valid(trace_id="u1"), market=Market(None, Decimal(0), Decimal(0)))
    assert decision.primary is Reason.STATE_UNAVAILABLE
    assert decision.context["state_key"] == s.inflight_key
    assert redis_client.get(s.order_key("u1")) is None  # nothing written
    redis_client.delete(s.inflight_key)
    redis_client.zadd(s.inflight_expiry_key, {"ETHUSDT:someone": 1})
    redis_client.hset(s.inflight_key, "ETHUSDT:someone", "lots")
    due = s.admit(valid(trace_id="u3"), market=FLAT)
    assert due.primary is Reason.STATE_UNAVAILABLE
    assert redis_client.hget(s.inflight_key, "ETHUSDT:someone") == "lots"  # left as is
    redis_client.delete(s.inflight_key)
    redis_client.set(s.inflight_key, "x")
    assert s.admit(valid(trace_id="u2"), market=FLAT).primary is Reason.STATE_UNAVAILABLE


@pytest.mark.parametrize("limit_key", ["MAX_POSITION_USD", "MAX_GROSS_EXPOSURE_USD"])
def test_racing_workers_never_admit_more_than_the_limit(redis_url: str, limit_key: str) -> None:
    # 8 threads, each its own connection and store, 10 entries each of 35 USD, on one Redis;
    # the exchange shows a flat account the whole time (the fills are not visible yet).
    limit = Decimal(1000)
    passed: list[Decimal] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def run(n: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        s = store(client, **{limit_key: str(limit)})
        barrier.wait()
        for i in range(10):
            symbol = "ETHUSDT" if limit_key == "MAX_POSITION_USD" else ("BTCUSDT", "ETHUSDT")[i % 2]
            d = s.admit(valid(trace_id=f"r{n}-{i}", symbol=symbol), market=FLAT)
            if d.verdict is GateVerdict.PASS:
                with lock:
                    passed.append(Decimal(35))
        client.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(passed) <= limit
    assert len(passed) == 28  # floor(1000 / 35): every bit of room is used, no more


# --- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PRICE_COLLAR_PCT", "0"),
        ("PRICE_COLLAR_PCT", "100.5"),
        ("PRICE_COLLAR_PCT", "five"),
        ("MAX_POSITION_USD", "-1"),
        ("MAX_POSITION_USD", "2e9"),
        ("MAX_GROSS_EXPOSURE_USD", "0"),
        ("MAX_GROSS_EXPOSURE_USD", "\uff11\uff10"),  # fullwidth digits
        ("MARKET_DATA_MAX_AGE_MS", "50"),
        ("MARKET_DATA_MAX_AGE_MS", "3s"),
    ],
)
def test_bad_limits_are_config_errors_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={key: value})
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(f"{key}=")


def test_defaults_are_off() -> None:
    c = config()
    assert (c.price_collar_pct, c.max_position_usd, c.max_gross_exposure_usd) == (None,) * 3
    assert c.market_data_max_age_ms == 3000


# --- gate-proof ------------------------------------------------------------------------------
def test_gate_proof_has_a_case_per_limit_and_drops_a_limit_that_is_off(
    redis_client: redis.Redis,
) -> None:
    on = run_proof(redis_client, config(**ON))
    assert all(r.ok for r in on), [(r.name, r.reasons, r.note) for r in on if not r.ok]
    names = [r.name for r in on]
    assert "PRICE_COLLAR" in names and "MAX_POSITION" in names
    off = run_proof(redis_client, config())
    assert all(r.ok for r in off)
    assert not {"PRICE_COLLAR", "MAX_POSITION"} & {r.name for r in off}
    gross_only = run_proof(redis_client, config(MAX_GROSS_EXPOSURE_USD="500"))
    assert all(r.ok for r in gross_only)
    assert redis_client.keys("*") == []


# --- the worker against the fake exchange ------------------------------------------------------
@pytest.fixture
def pipe(redis_url: str, tmp_path: Path) -> Any:
    p = Pipeline(redis_url, tmp_path)
    yield p
    p.close()


def worker(pipe: Pipeline, mode: TradingMode = TradingMode.TESTNET, **env: Any) -> Worker:
    cfg = load_config(
        pipe.workdir / "core_gates.env", environ={k: str(v) for k, v in (ON | env).items()}
    )
    ex = from_config(cfg, testnet=True, timeout_s=0.5, max_attempts=1)
    return Worker(pipe.client, cfg, mode, ex, consumer="w1:quantum-execution", block_ms=100)


def run_one(pipe: Pipeline, w: Worker, i: int = 1, **over: Any) -> dict[str, str]:
    data = intent(i, pipe.run) | over
    assert streams.publish_intent_once(pipe.client, parse_intent(data)) is not None
    w._run_entries(consume.read_new(w.raw, w.consumer, block_ms=None, count=100))
    (result,) = [r for r in pipe.results() if r.get("trace_id") == data["trace_id"]]
    return result


def test_worker_places_with_the_limits_on_and_the_fill_moves_the_position(pipe: Pipeline) -> None:
    w = worker(pipe)
    res = run_one(pipe, w, 1)  # BUY 0.1 ETHUSDT at 3000, the fake's mark
    assert res["status"] == "order_placed", res
    rows = w.exchange.client.futures_position_information()
    assert [(r["symbol"], r["positionAmt"], r["notional"]) for r in rows] == [
        ("ETHUSDT", "0.100", "300.000")
    ]
    # the filled order still counts as in flight for a while (settle), then the position does
    key = f"ETHUSDT:{res['trace_id']}"
    _, until = pipe.client.hget(w.store.inflight_key, key).split("|")
    assert int(until) - w.store.server_time_ms() <= inflight.settle_ms(w.config)
    # the position grows to 900 USD at the fake; the next 300 USD entry would make 1200
    control(pipe.exchange, "/_market", {"positions": {"ETHUSDT": "0.3"}})
    w.market = type(w.market)(w.exchange, w.config)  # a fresh cache, as after max age
    held = run_one(pipe, w, 5)
    assert (held["status"], held["reasons"]) == ("gate_blocked", "MAX_POSITION")
    assert len(pipe.exchange_orders()) == 1  # nothing more reached the exchange


def test_worker_holds_an_entry_off_the_mark(pipe: Pipeline) -> None:
    w = worker(pipe)
    control(pipe.exchange, "/_market", {"mark_price": {"ETHUSDT": "3200"}})  # 6.25 % away
    res = run_one(pipe, w, 1)
    assert (res["status"], res["reasons"], res["primary"]) == (
        "gate_blocked",
        "PRICE_COLLAR",
        "PRICE_COLLAR",
    )
    assert pipe.exchange_orders() == []
    assert pipe.client.hget(w.store.inflight_key, "#") in (None, "0")


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"mark_5xx": 1}, "PRICE_COLLAR"),
        ({"mark_garbage": 1}, "PRICE_COLLAR"),
        ({"mark_stale_ms": 10000}, "PRICE_COLLAR"),
        ({"mark_delay_ms": 1500}, "PRICE_COLLAR"),  # the client's 0.5 s timeout
        ({"position_5xx": 1}, "MAX_POSITION"),
        ({"position_garbage": 1}, "MAX_POSITION"),
        ({"position_delay_ms": 1500}, "MAX_POSITION"),
    ],
)
def test_unavailable_garbage_or_stale_data_holds(
    pipe: Pipeline, faults: dict[str, int], reason: str
) -> None:
    w = worker(pipe)
    control(pipe.exchange, "/_market", {"positions": {"BTCUSDT": "0.001"}})  # a row to spoil
    pipe.fault(**faults)
    res = run_one(pipe, w, 1)
    assert (res["status"], res["reasons"]) == ("gate_blocked", reason)
    assert pipe.exchange_orders() == []


def test_worker_exits_are_exempt_and_live_audits_without_data(pipe: Pipeline) -> None:
    control(pipe.exchange, "/_market", {"positions": {"ETHUSDT": "0.1"}})
    pipe.fault(mark_garbage=1, position_garbage=1)
    w = worker(pipe)
    exit_ = {"trace_id": "x-exit", "symbol": "ETHUSDT", "side": "SELL", "qty": "0.100"}
    data = exit_ | {"price": "3000", "reduce_only": True}
    assert streams.publish_intent_once(pipe.client, parse_intent(data)) is not None
    w._run_entries(consume.read_new(w.raw, w.consumer, block_ms=None, count=100))
    (res,) = pipe.results()
    assert res["status"] == "order_placed"
    assert pipe.stats().get("mark_price_requests", 0) == 0  # an exit asks for nothing
    live = worker(pipe, TradingMode.LIVE)
    audited = run_one(pipe, live, 1)
    assert audited["status"] == "order_placed"  # LIVE: audit-only, and no crash
    assert len(pipe.exchange_orders()) == 2


def test_an_entry_the_exchange_refuses_is_released_at_once(pipe: Pipeline) -> None:
    w = worker(pipe)
    res = run_one(pipe, w, 1, qty="0.1005")  # passes the gates, breaks the step size
    assert res["status"] == "failed"
    assert pipe.client.hget(w.store.inflight_key, "#") in (None, "0")


def test_fake_market_controls_refuse_bad_input(pipe: Pipeline) -> None:
    for body in ({"mark_price": {"NOPEUSDT": "1"}}, {"positions": {"ETHUSDT:UP": "1"}}, [1]):
        with pytest.raises(urllib.error.HTTPError) as info:
            control(pipe.exchange, "/_market", body)  # type: ignore[arg-type]
        assert info.value.code == 400
    one = pipe.exchange.root_url + "/fapi/v1/premiumIndex?symbol=ETHUSDT"
    with urllib.request.urlopen(one, timeout=5) as resp:
        row = json.load(resp)
    assert row["symbol"] == "ETHUSDT" and row["markPrice"] == "3000"
    assert isinstance(row["time"], int) and isinstance(row["nextFundingTime"], int)
    with urllib.request.urlopen(pipe.exchange.root_url + "/fapi/v1/premiumIndex", timeout=5) as r:
        assert {x["symbol"] for x in json.load(r)} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"}


def test_cached_market_data_is_used_only_within_its_max_age(pipe: Pipeline) -> None:
    now = [1000.0]
    w = worker(pipe)
    md = type(w.market)(w.exchange, w.config, clock=lambda: now[0])
    entry = parse_intent(intent(1, pipe.run))
    assert md.for_intent(entry) == Market(Decimal(3000), Decimal(0), Decimal(0))
    asked = pipe.stats()["mark_price_requests"], pipe.stats()["position_requests"]
    pipe.fault(mark_5xx=1, position_5xx=1)
    now[0] += 2.9  # within MARKET_DATA_MAX_AGE_MS=3000: the cache answers
    assert md.for_intent(entry).mark_price == Decimal(3000)
    assert (pipe.stats()["mark_price_requests"], pipe.stats()["position_requests"]) == asked
    now[0] += 0.2  # 3.1 s old: never used again; the exchange fails now -> no value
    stale = md.for_intent(entry)
    assert stale.mark_price is None and stale.position_usd is None
    assert "code=-1000" in str(stale.mark_error)
    assert "code=-1000" in str(stale.position_error)


# --- evaluate's situation fields -----------------------------------------------------------------
ENTRY_LINE = {
    "symbol": "ETHUSDT",
    "side": "BUY",
    "qty": 0.01,
    "price": 3500,
    "expected_move_usd": 250,
    "tp": 3587.5,
    "sl": 3465,
    "model": "NHiTS",
    "regime": "TREND",
}


def test_evaluate_takes_the_market_as_situation_fields(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_kernel_env: None,
) -> None:
    env = tmp_path / "core_gates.env"
    env.write_text("PRICE_COLLAR_PCT=5\nMAX_GROSS_EXPOSURE_USD=1000\n", encoding="utf-8")
    market = {"mark_price": 3500, "position_notional_usd": 0, "gross_exposure_usd": 965}
    lines = [
        ENTRY_LINE,  # no market: both limits hold (no data)
        ENTRY_LINE | market,  # 965 + 35 = 1000: passes
        ENTRY_LINE | market | {"gross_exposure_usd": 966},
        ENTRY_LINE | market | {"mark_price": 3000},
        ENTRY_LINE | {"mark_price": 3500},  # no positions given: MAX_POSITION holds
        ENTRY_LINE | {"mark_price": "3500"},
        ENTRY_LINE | {"gross_exposure_usd": -1},
        ENTRY_LINE | {"mark_price": 0},
    ]
    stdin = "\n".join(json.dumps(x) for x in lines) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["evaluate", "--config", str(env), "--mode", "TESTNET"])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "Traceback" not in err
    assert rows[0]["reasons"] == ["PRICE_COLLAR", "MAX_POSITION"]
    assert rows[0]["context"]["mark_price_error"] == "no market data"
    assert rows[1]["verdict"] == "PASS"
    assert rows[2]["reasons"] == ["MAX_POSITION"]
    assert rows[3]["reasons"] == ["PRICE_COLLAR"]
    assert rows[4]["reasons"] == ["MAX_POSITION"]
    assert rows[5]["error"].startswith("mark_price: must be a JSON number")
    assert rows[6]["error"].startswith("gross_exposure_usd: must be a number >= 0")
    assert rows[7]["error"].startswith("mark_price: must be a number > 0")


def test_a_replay_keeps_its_first_reasons_whatever_the_market_says_now(
    redis_client: redis.Redis,
) -> None:
    s = store(redis_client, **ON)
    off_mark = Market(Decimal(3000), Decimal(0), Decimal(0))
    first = s.admit(valid(trace_id="p1"), market=off_mark)
    assert first.reasons == (Reason.PRICE_COLLAR,)
    again = s.admit(valid(trace_id="p1"), market=FLAT)  # the mark is fine now
    assert again.replayed and again.verdict is GateVerdict.HOLD
    assert again.reasons == (Reason.PRICE_COLLAR,)
    passed = s.admit(valid(trace_id="p2"), market=FLAT)
    assert passed.verdict is GateVerdict.PASS
    replay = s.admit(valid(trace_id="p2"))  # no data now: still the stored PASS, no reasons
    assert replay.replayed and replay.verdict is GateVerdict.PASS and replay.reasons == ()
    big = Market(Decimal(3500), Decimal(990), Decimal(0))
    held = s.admit(valid(trace_id="p3"), market=big)
    assert s.admit(valid(trace_id="p3"), market=FLAT).reasons == (Reason.MAX_POSITION,)
    assert held.reasons == (Reason.MAX_POSITION,)
