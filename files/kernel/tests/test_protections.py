"""The automatic protections (issue 14 item 4): real redis-server, the fake exchange over HTTP,
the real CLI. Every test that trips also checks who the audit names and what the state is; the
clock is injected, so a UTC day boundary is crossed without sleeping.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RedisServer
from helpers import control
from hypothesis import given, settings
from hypothesis import strategies as st

from core_kernel import consume, protections, streams
from core_kernel.config import load_config
from core_kernel.exchange import FuturesExchange, from_config
from core_kernel.fake_binance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance
from core_kernel.intent import parse_intent
from core_kernel.mode import TradingMode
from core_kernel.protect import Protector, ResumeRefused, protection_key, resume
from core_kernel.protections import Limits, Trip
from core_kernel.trading_state import (
    TradingState,
    audit_stream,
    read_state,
    set_state,
    state_key,
)
from core_kernel.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent

CORE_KERNEL = shutil.which("core-kernel", path=str(Path(sys.executable).parent))
PROT = protection_key()
AUDIT = audit_stream()
WHO = ("tester", "testhost")
HOST = "protect-host"
DAY_S = 86400
NOW = 10**12  # 2001-09-09T01:46:40Z


class Clock:
    """The poller's clock, moved by the test."""

    def __init__(self, t: float | None = None) -> None:
        now = datetime.now(UTC).timestamp()
        self.t = now if t is None else t

    def __call__(self) -> float:
        return self.t

    def ms(self) -> int:
        return int(self.t * 1000)


def tonight(seconds_before_midnight: int = 60) -> float:
    """Today's 23:59:00 UTC (default): a day boundary one minute ahead."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight + timedelta(days=1)).timestamp() - seconds_before_midnight


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    server = FakeBinance().start()
    yield server
    server.stop()


def limits(**over: Any) -> Limits:
    base: dict[str, Any] = {
        "daily_loss_limit_usd": None,
        "max_drawdown_pct": Decimal("10"),
        "trip_state": "REDUCING",
        "stale_ms": 60_000,
    }
    base.update(over)
    return Limits(**base)


def exchange(fake: FakeBinance) -> FuturesExchange:
    return FuturesExchange(
        DEFAULT_API_KEY, DEFAULT_API_SECRET, base_url=fake.base_url, timeout_s=2, max_attempts=1
    )


def protector(
    client: redis.Redis,
    fake: FakeBinance,
    clock: Clock,
    *,
    enforce: bool = True,
    mode: str = "TESTNET",
    **over: Any,
) -> Protector:
    return Protector(
        client, exchange(fake), limits(**over), enforce=enforce, mode=mode, clock=clock, host=HOST
    )


def account(fake: FakeBinance, wallet: str, unrealized: str = "0") -> None:
    control(fake, "/_account", {"wallet": wallet, "unrealized": unrealized})


def income(fake: FakeBinance, kind: str, amount: str, at_ms: int) -> None:
    control(fake, "/_income", {"incomeType": kind, "income": amount, "time": at_ms})


def record(client: redis.Redis) -> dict[str, str]:
    return dict(client.hgetall(PROT))


def trips(client: redis.Redis) -> dict[str, dict[str, Any]]:
    return {k[5:]: json.loads(v) for k, v in record(client).items() if k.startswith("trip:")}


def last_audit(client: redis.Redis) -> dict[str, str]:
    entries = client.xrevrange(AUDIT, count=1)
    return dict(entries[0][1]) if entries else {}


# --- the fake exchange's account ----------------------------------------------------------------
def test_the_fake_serves_the_account_and_income_signed(fake: FakeBinance) -> None:
    ex = exchange(fake)
    data = ex.account()
    # numbers as strings, as Binance sends them; the default lab account is 10000 USDT flat
    assert data["totalWalletBalance"] == "10000.00000000"
    assert data["totalMarginBalance"] == "10000.00000000"
    assert data["totalUnrealizedProfit"] == "0.00000000"
    account(fake, "12000.5", "-500.25")
    data = ex.account()
    assert data["totalMarginBalance"] == "11500.25000000"
    assert data["assets"][0]["marginBalance"] == "11500.25000000"
    income(fake, "REALIZED_PNL", "-10", 1000)
    income(fake, "COMMISSION", "-1", 2000)
    income(fake, "REALIZED_PNL", "5", 3000)
    got = ex.income(1000, 2000)
    assert [(e["incomeType"], e["income"], e["time"]) for e in got] == [
        ("REALIZED_PNL", "-10", 1000),
        ("COMMISSION", "-1", 2000),
    ]
    assert len(ex.income(0, 10**13, limit=2)) == 2
    # signed like every account endpoint: a wrong secret is -1022, an old timestamp -1021
    from binance.client import Client  # noqa: PLC0415
    from binance.exceptions import BinanceAPIException  # noqa: PLC0415

    bad = Client(DEFAULT_API_KEY, "wrong", ping=False)
    bad.FUTURES_URL = fake.base_url
    with pytest.raises(BinanceAPIException) as exc:
        bad.futures_account()
    assert exc.value.code == -1022
    late = Client(DEFAULT_API_KEY, DEFAULT_API_SECRET, ping=False)
    late.FUTURES_URL = fake.base_url
    late.timestamp_offset = -60_000
    with pytest.raises(BinanceAPIException) as exc:
        late.futures_income_history(recvWindow=5000)
    assert exc.value.code == -1021
    control(fake, "/_reset", {})
    assert ex.account()["totalMarginBalance"] == "10000.00000000"


# --- the pure rules -------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.decimals(min_value=1, max_value=10**9, places=2, allow_nan=False),
        min_size=1,
        max_size=20,
    ),
    st.decimals(min_value="0.01", max_value="99.99", places=2),
)
def test_drawdown_is_measured_from_the_peak(equities: list[Decimal], limit: Decimal) -> None:
    raw: dict[str, str] = {}
    now = 1_700_000_000_000
    out = None
    for equity in equities:
        acct = {
            "totalWalletBalance": str(equity),
            "totalUnrealizedProfit": "0",
            "totalMarginBalance": str(equity),
        }
        out = protections.decide(
            raw, protections.ReadOk(acct, []), now, limits(max_drawdown_pct=limit)
        )
        raw.update(out.fields)
    assert out is not None
    peak = max(equities)
    assert Decimal(raw["hwm"]) == peak
    tripped = (peak - equities[-1]) / peak * 100 >= limit
    assert any(t.code is Trip.MAX_DRAWDOWN for t in out.trips) == tripped


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ([], "not a JSON object"),
        ({"totalWalletBalance": "1", "totalUnrealizedProfit": "0"}, "totalMarginBalance=None"),
        (
            {"totalWalletBalance": "1", "totalUnrealizedProfit": "0", "totalMarginBalance": "NaN"},
            "not a decimal balance",
        ),
        (
            {"totalWalletBalance": "1", "totalUnrealizedProfit": "0", "totalMarginBalance": 1},
            "not a decimal balance",
        ),
        (
            {"totalWalletBalance": "0", "totalUnrealizedProfit": "0", "totalMarginBalance": "0"},
            "not positive",
        ),
    ],
)
def test_an_unusable_account_answer_trips_at_once(answer: Any, needle: str) -> None:
    out = protections.decide({}, protections.ReadOk(answer, []), 10**12, limits())
    assert [t.code for t in out.trips] == [Trip.EQUITY_INVALID]
    assert out.trips[0].state == "REDUCING" and needle in out.trips[0].reason
    assert "hwm" not in out.fields and "last_ok_ms" not in out.fields


# --- transitions through Redis and the fake exchange ----------------------------------------------
def test_drawdown_trips_from_the_peak_not_the_start(redis_client: redis.Redis, fake) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock)
    steps = [
        # (wallet, unrealised, tripped): the start is 10000, the peak 12000
        ("10000", "0", False),
        ("12000", "0", False),
        ("12000", "-1100", False),  # 10900: -9.17 % from the peak, +9 % from the start
        ("11000", "-210", True),  # 10790: -10.08 % from the peak, still above the start
    ]
    for wallet, upnl, tripped in steps:
        account(fake, wallet, upnl)
        clock.t += 30
        data = p.poll()
        assert (data["state"] == "REDUCING") == tripped, data
    assert data["hwm"] == Decimal("12000.00000000") and data["new_trips"] == ["MAX_DRAWDOWN"]
    assert data["drawdown_pct"] == Decimal("10.0833")
    view = read_state(redis_client)
    assert view.state is TradingState.REDUCING
    assert view.raw["user"] == "protection:MAX_DRAWDOWN" and view.raw["host"] == HOST
    assert view.raw["source"] == "protection" and "12000" in view.raw["reason"]
    audit = last_audit(redis_client)
    assert (audit["from"], audit["to"], audit["user"]) == (
        "ACTIVE",
        "REDUCING",
        "protection:MAX_DRAWDOWN",
    )
    rec = trips(redis_client)["MAX_DRAWDOWN"]
    assert rec["audit_id"] == view.raw["audit_id"] and rec["to"] == "REDUCING"
    # the same condition on the next poll records nothing new and writes no audit entry
    clock.t += 30
    again = p.poll()
    assert again["new_trips"] == [] and again["active_trips"] == ["MAX_DRAWDOWN"]
    assert redis_client.xlen(AUDIT) == 1
    # recovering equity does not re-arm the drawdown lock: only resume does
    account(fake, "13000")
    clock.t += DAY_S
    assert p.poll()["state"] == "REDUCING"
    assert read_state(redis_client).state is TradingState.REDUCING


def test_daily_loss_counts_realised_pnl_fees_and_funding_since_midnight(
    redis_client: redis.Redis, fake
) -> None:
    clock = Clock(tonight(3600))  # 23:00 UTC
    start = protections.day_start_ms(clock.ms())
    p = protector(redis_client, fake, clock, daily_loss_limit_usd=Decimal("100"))
    income(fake, "REALIZED_PNL", "-500", start - 1)  # yesterday: not today's loss
    income(fake, "REALIZED_PNL", "-60", start)
    income(fake, "COMMISSION", "-25.5", start + 1000)
    income(fake, "TRANSFER", "-5000", start + 2000)  # a withdrawal is not a trading loss
    income(fake, "REALIZED_PNL", "+1", start + 3000)
    data = p.poll()
    assert data["day_loss"] == Decimal("84.5") and data["state"] == "ACTIVE"
    income(fake, "FUNDING_FEE", "-16.5", start + 4000)
    clock.t += 30
    data = p.poll()
    assert data["day_loss"] == Decimal("101.0") and data["new_trips"] == ["DAILY_LOSS_LIMIT"]
    view = read_state(redis_client)
    assert view.state is TradingState.REDUCING
    assert view.raw["user"] == "protection:DAILY_LOSS_LIMIT"
    assert "DAILY_LOSS_LIMIT_USD=100" in view.raw["reason"]


def test_income_is_paged_past_a_thousand_entries(redis_client: redis.Redis, fake) -> None:
    clock = Clock(tonight(3600))
    start = protections.day_start_ms(clock.ms())
    entries = [
        {"incomeType": "COMMISSION", "income": "-0.01", "time": start + n // 3} for n in range(2500)
    ]
    control(fake, "/_income", entries)
    data = protector(redis_client, fake, clock, daily_loss_limit_usd=Decimal("1000")).poll()
    assert data["day_loss"] == Decimal("25.00")


def test_trip_state_halted_when_configured(redis_client: redis.Redis, fake) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock, trip_state="HALTED")
    p.poll()
    account(fake, "8000")
    data = p.poll()
    assert data["state"] == "HALTED" and trips(redis_client)["MAX_DRAWDOWN"]["state"] == "HALTED"
    # a fail-closed trip is REDUCING whatever the setting: it never loosens HALTED
    control(fake, "/_fault", {"account_garbage": 1})
    data = p.poll()
    assert data["new_trips"] == ["EQUITY_INVALID"] and data["state"] == "HALTED"


def test_never_loosens_an_operator_halt_and_tightens_an_operator_reduce(
    redis_client: redis.Redis, fake
) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock)
    p.poll()
    set_state(redis_client, TradingState.HALTED, "operator stop", who=WHO)
    account(fake, "5000")
    data = p.poll()
    assert data["new_trips"] == ["MAX_DRAWDOWN"] and data["state"] == "HALTED"
    assert not data["changed"] and trips(redis_client)["MAX_DRAWDOWN"]["audit_id"] == ""
    assert read_state(redis_client).raw["user"] == "tester"
    assert redis_client.xlen(AUDIT) == 1
    # an operator REDUCING is tightened by a HALTED trip, never moved to ACTIVE
    redis_client.delete(PROT)
    set_state(redis_client, TradingState.REDUCING, "exits only", who=WHO)
    account(fake, "10000")
    h = protector(redis_client, fake, clock, trip_state="HALTED")
    assert h.poll()["state"] == "REDUCING"
    account(fake, "1000")
    assert h.poll()["state"] == "HALTED"
    assert last_audit(redis_client)["from"] == "REDUCING"


# --- fail closed ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["account_5xx", "account_drop"])
def test_equity_unreadable_longer_than_the_bound_trips(
    redis_client: redis.Redis, fake, fault: str
) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock)
    assert p.poll()["state"] == "ACTIVE"
    last_ok = clock.ms()
    control(fake, "/_fault", {fault: 10**6})
    for dt, state in ((30, "ACTIVE"), (59, "ACTIVE"), (61, "REDUCING")):
        clock.t = last_ok / 1000 + dt
        data = p.poll()
        assert data["state"] == state and data["error"], data
        assert data["ok"] is False  # a failed read is never "fine"
    assert data["new_trips"] == ["EQUITY_STALE"]
    assert "PROTECTION_STALE_SECONDS=60" in read_state(redis_client).raw["reason"]
    # the last good figures and HWM are kept; the failure is recorded
    rec = record(redis_client)
    assert rec["hwm"] == "10000.00000000" and rec["last_ok_ms"] == str(last_ok)
    assert "first_fail_ms" in rec and rec["last_error"]
    # readable again: the trip stays until the operator resumes
    control(fake, "/_fault", {fault: 0})
    clock.t += 30
    data = p.poll()
    assert data["error"] is None and data["active_trips"] == ["EQUITY_STALE"]
    assert data["state"] == "REDUCING" and "first_fail_ms" not in record(redis_client)


def test_with_both_limits_off_nothing_trips(redis_client: redis.Redis, fake) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock, max_drawdown_pct=None)
    p.poll()
    account(fake, "1000")
    assert p.poll()["state"] == "ACTIVE"
    control(fake, "/_fault", {"account_5xx": 10**6})
    clock.t += 3600
    data = p.poll()
    assert data["state"] == "ACTIVE" and data["error"] and data["active_trips"] == []
    assert redis_client.xlen(AUDIT) == 0


def test_never_read_at_all_trips_after_the_bound(redis_client: redis.Redis, fake) -> None:
    control(fake, "/_fault", {"account_5xx": 10**6})
    clock = Clock()
    p = protector(redis_client, fake, clock)
    assert p.poll()["state"] == "ACTIVE"
    clock.t += 61
    assert p.poll()["new_trips"] == ["EQUITY_STALE"]


def test_a_garbage_answer_trips_at_once(redis_client: redis.Redis, fake) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock)
    p.poll()
    control(fake, "/_fault", {"account_garbage": 1})
    clock.t += 1  # well inside the staleness bound
    data = p.poll()
    assert data["new_trips"] == ["EQUITY_INVALID"] and data["state"] == "REDUCING"
    assert "invalid answer: totalWalletBalance='1,000.00'" in read_state(redis_client).raw["reason"]


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ({"income": "-1"}, "not a JSON list"),
        (["x"], "income[0]: not a JSON object"),
        ([{"incomeType": "REALIZED_PNL", "income": "lots", "time": NOW}], "not a decimal"),
        ([{"incomeType": "REALIZED_PNL", "income": "-1", "time": "5"}], "not an integer"),
        ([{"incomeType": "REALIZED_PNL", "income": "-1", "time": 10**13}], "outside the day"),
    ],
)
def test_an_unusable_income_answer_trips_at_once(entries: Any, needle: str) -> None:
    acct = {"totalWalletBalance": "1", "totalUnrealizedProfit": "0", "totalMarginBalance": "1"}
    out = protections.decide({}, protections.ReadOk(acct, entries), NOW, limits())
    assert [t.code for t in out.trips] == [Trip.EQUITY_INVALID]
    assert needle in out.trips[0].reason


def test_a_corrupt_record_is_a_calculation_error_and_trips(redis_client: redis.Redis, fake) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock)
    p.poll()
    redis_client.hset(PROT, "hwm", "a lot")
    data = p.poll()
    assert data["new_trips"] == ["PROTECTION_ERROR"] and data["state"] == "REDUCING"
    assert "hwm" in read_state(redis_client).raw["reason"]
    # resume clears the broken mark: the next read sets a new one
    resume(redis_client, "checked", who=WHO, clock=clock)
    data = p.poll()
    assert data["state"] == "ACTIVE" and record(redis_client)["hwm"] == "10000.00000000"


def test_a_clock_that_fails_is_a_calculation_error_and_trips(
    redis_client: redis.Redis, fake
) -> None:
    data = protector(redis_client, fake, Clock(float("nan"))).poll()
    assert data["new_trips"] == ["PROTECTION_ERROR"] and data["state"] == "REDUCING"
    assert "ValueError" in read_state(redis_client).raw["reason"]


# --- re-arm ---------------------------------------------------------------------------------------
def _daily_tripped(client: redis.Redis, fake, clock: Clock, **over: Any) -> Protector:
    p = protector(client, fake, clock, daily_loss_limit_usd=Decimal("100"), **over)
    income(fake, "REALIZED_PNL", "-150", clock.ms() - 1000)
    data = p.poll()
    assert data["new_trips"] == ["DAILY_LOSS_LIMIT"] and data["state"] == "REDUCING"
    return p


def test_the_daily_limit_rearms_at_the_utc_day_boundary(
    redis_client: redis.Redis, fake, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(tonight(60))
    p = _daily_tripped(redis_client, fake, clock)
    clock.t += 59  # 23:59:59
    assert p.poll()["state"] == "REDUCING"
    clock.t += 2  # 00:00:01 the next day
    with caplog.at_level(logging.WARNING):
        data = p.poll()
    assert data["rearmed"] and data["state"] == "ACTIVE" and data["active_trips"] == []
    audit = last_audit(redis_client)
    assert (audit["from"], audit["to"], audit["user"]) == (
        "REDUCING",
        "ACTIVE",
        "protection:DAILY_LOSS_LIMIT",
    )
    assert "re-armed at the UTC day boundary" in audit["reason"]
    assert data["day_loss"] == 0
    assert "TRADING_STATE_CHANGED from=REDUCING to=ACTIVE user=protection:DAILY_LOSS_LIMIT" in (
        caplog.text
    )


def test_a_new_day_over_the_limit_again_still_rearms_the_day_after(
    redis_client: redis.Redis, fake
) -> None:
    clock = Clock(tonight(60))
    p = _daily_tripped(redis_client, fake, clock)
    clock.t += 120  # the next day, 00:01
    income(fake, "REALIZED_PNL", "-200", clock.ms() - 1000)
    data = p.poll()
    assert data["state"] == "REDUCING" and data["active_trips"] == ["DAILY_LOSS_LIMIT"]
    clock.t += DAY_S
    assert p.poll()["state"] == "ACTIVE"


def test_the_daily_limit_does_not_rearm_what_someone_else_holds(
    redis_client: redis.Redis, fake
) -> None:
    # another trip stands: the drawdown lock
    clock = Clock(tonight(60))
    p = _daily_tripped(redis_client, fake, clock)
    account(fake, "8000")
    assert p.poll()["active_trips"] == ["DAILY_LOSS_LIMIT", "MAX_DRAWDOWN"]
    clock.t += 120
    data = p.poll()
    assert data["state"] == "REDUCING" and data["active_trips"] == ["MAX_DRAWDOWN"]
    assert not data["rearmed"]
    # the operator changed the state after the trip
    redis_client.flushdb()
    account(fake, "10000")
    control(fake, "/_reset", {})
    clock = Clock(tonight(60))
    p = _daily_tripped(redis_client, fake, clock)
    set_state(redis_client, TradingState.HALTED, "looking into it", who=WHO)
    set_state(redis_client, TradingState.REDUCING, "exits only", who=WHO)
    clock.t += 120
    data = p.poll()
    assert data["state"] == "REDUCING" and data["active_trips"] == [] and not data["rearmed"]
    assert read_state(redis_client).raw["user"] == "tester"


def test_the_daily_limit_does_not_rearm_while_the_equity_is_unreadable(
    redis_client: redis.Redis, fake
) -> None:
    clock = Clock(tonight(60))
    p = _daily_tripped(redis_client, fake, clock, stale_ms=600_000)
    control(fake, "/_fault", {"account_5xx": 10**6})
    clock.t += 120
    data = p.poll()
    assert data["state"] == "REDUCING" and data["active_trips"] == ["DAILY_LOSS_LIMIT"]
    control(fake, "/_fault", {"account_5xx": 0})
    clock.t += 10
    assert p.poll()["state"] == "ACTIVE"


def test_resume_rearms_the_drawdown_lock_with_a_new_high_water_mark(
    redis_client: redis.Redis, fake
) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock)
    account(fake, "12000")
    p.poll()
    account(fake, "10000")
    assert p.poll()["state"] == "REDUCING"
    done = resume(redis_client, "reviewed the loss", who=WHO, clock=clock)
    assert done.change.after is TradingState.ACTIVE and done.cleared == 1
    assert last_audit(redis_client)["user"] == "tester"
    # the same equity on the next poll: a new peak, no re-trip (no stale high-water mark)
    clock.t += 30
    data = p.poll()
    assert data["state"] == "ACTIVE" and data["hwm"] == Decimal("10000.00000000")
    # and the lock works again from the new peak
    account(fake, "8999")
    assert p.poll()["new_trips"] == ["MAX_DRAWDOWN"]


def test_resume_while_the_daily_limit_stands_is_refused_unless_forced(
    redis_client: redis.Redis, fake
) -> None:
    clock = Clock(tonight(3600))
    p = _daily_tripped(redis_client, fake, clock)
    with pytest.raises(ResumeRefused, match="DAILY_LOSS_LIMIT tripped today"):
        resume(redis_client, "go", who=WHO, clock=clock)
    assert read_state(redis_client).state is TradingState.REDUCING
    done = resume(redis_client, "go anyway", force=True, who=WHO, clock=clock)
    assert done.waived and done.change.after is TradingState.ACTIVE
    clock.t += 30
    data = p.poll()
    assert data["state"] == "ACTIVE" and data["daily_waived"] is True
    # the next UTC day the limit is on again
    clock.t += DAY_S
    income(fake, "REALIZED_PNL", "-150", clock.ms() - 1000)
    assert p.poll()["new_trips"] == ["DAILY_LOSS_LIMIT"]
    # yesterday's trip no longer blocks a resume
    clock.t += DAY_S
    assert resume(redis_client, "new day", who=WHO, clock=clock).change.after is (
        TradingState.ACTIVE
    )


# --- restarts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["ACTIVE", "REDUCING", "HALTED", "FAILING"])
def test_hwm_and_trips_survive_a_redis_and_a_poller_restart(
    tmp_path: Path, fake, case: str
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        clock = Clock()
        trip_state = "HALTED" if case == "HALTED" else "REDUCING"
        p = protector(client, fake, clock, trip_state=trip_state)
        account(fake, "12000")
        p.poll()
        if case in ("REDUCING", "HALTED"):
            account(fake, "10000")
            assert p.poll()["state"] == case
        if case == "FAILING":
            control(fake, "/_fault", {"account_5xx": 10**6})
            clock.t += 40
            assert p.poll()["state"] == "ACTIVE"
        before = record(client)
        client.close()
        server.stop(kill=True)  # AOF with appendfsync always
        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert record(client) == before
        assert read_state(client).state.value == ("ACTIVE" if case == "FAILING" else case)
        # a new poller process: the peak is the stored one, not the equity it first sees
        p = protector(client, fake, clock, trip_state=trip_state)
        clock.t += 30
        data = p.poll()
        if case == "ACTIVE":
            assert data["hwm"] == Decimal("12000.00000000") and data["state"] == "ACTIVE"
            account(fake, "10000")
            assert p.poll()["new_trips"] == ["MAX_DRAWDOWN"]
        elif case == "FAILING":
            # the last good read's time survived: a restart does not restart the bound
            assert data["new_trips"] == ["EQUITY_STALE"]
        else:
            assert data["state"] == case and data["new_trips"] == []
            assert data["active_trips"] == ["MAX_DRAWDOWN"]
        client.close()
    finally:
        server.stop()


# --- LIVE: audit only unless enabled --------------------------------------------------------------
def test_live_only_audits_unless_protection_live(
    redis_client: redis.Redis, fake, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    p = protector(redis_client, fake, clock, enforce=False, mode="LIVE")
    account(fake, "12000")
    p.poll()
    account(fake, "10000")
    with caplog.at_level(logging.WARNING, logger="core_kernel.protect"):
        data = p.poll()
    assert data["state"] == "ACTIVE" and data["audit_only_trips"] == ["MAX_DRAWDOWN"]
    assert data["ok"] is False and trips(redis_client) == {}
    assert redis_client.xlen(AUDIT) == 0 and read_state(redis_client).raw == {}
    assert "GATE_AUDIT gate=PROTECTION trip=MAX_DRAWDOWN mode=LIVE state=ACTIVE" in caplog.text
    # the figures are kept, so enabling it later measures from the true peak
    assert record(redis_client)["hwm"] == "12000.00000000"
    p = protector(redis_client, fake, clock, enforce=True, mode="LIVE")
    assert p.poll()["new_trips"] == ["MAX_DRAWDOWN"]
    assert read_state(redis_client).state is TradingState.REDUCING


# --- the CLI --------------------------------------------------------------------------------------
def _env(tmp_path: Path, redis_url: str, fake: FakeBinance, **over: str) -> Path:
    values = {
        "CORE_KERNEL_REDIS_URL": redis_url,
        "TRADING_MODE": "TESTNET",
        "BINANCE_TESTNET": "true",
        "USE_BINANCE_TESTNET": "true",
        "BINANCE_FUTURES_URL": fake.base_url,
        "BINANCE_API_KEY": DEFAULT_API_KEY,
        "BINANCE_API_SECRET": DEFAULT_API_SECRET,
        "MAX_DRAWDOWN_PCT": "10",
    }
    values.update(over)
    path = tmp_path / "core_gates.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def _cli(env_file: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    assert CORE_KERNEL
    proc = subprocess.run(
        [CORE_KERNEL, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "CORE_GATES_ENV": str(env_file),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        },
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert DEFAULT_API_SECRET not in proc.stderr + proc.stdout
    return proc


def test_cli_protect_once_json_and_exit_codes(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, fake
) -> None:
    env = _env(tmp_path, redis_url, fake)
    proc = _cli(env, "protect", "--once", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    data = json.loads(line)
    assert data["state"] == "ACTIVE" and data["equity"] == "10000.00000000" and data["ok"]
    account(fake, "8000")
    proc = _cli(env, "protect", "--once", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["new_trips"] == ["MAX_DRAWDOWN"]
    assert "PROTECTION_TRIP trip=MAX_DRAWDOWN from=ACTIVE to=REDUCING" in proc.stderr
    assert "TRADING_STATE_CHANGED from=ACTIVE to=REDUCING user=protection:MAX_DRAWDOWN" in (
        proc.stderr
    )
    # core-kernel state names the trip
    shown = json.loads(_cli(env, "state", "--json").stdout)
    assert shown["state"] == "REDUCING" and list(shown["protection_trips"]) == ["MAX_DRAWDOWN"]
    assert "protection trip MAX_DRAWDOWN: drawdown 20.00%" in _cli(env, "state").stdout
    # the plain line
    proc = _cli(env, "protect", "--once")
    assert proc.returncode == 1 and proc.stdout.startswith("REDUCING equity=8000")
    assert "trips=MAX_DRAWDOWN" in proc.stdout
    # resume through the CLI resets the peak: the next poll is fine
    proc = _cli(env, "resume", "--reason", "reviewed")
    assert proc.returncode == 0 and "REDUCING -> ACTIVE" in proc.stdout
    assert _cli(env, "protect", "--once").returncode == 0
    assert read_state(redis_client).state is TradingState.ACTIVE


def test_cli_resume_refused_while_the_daily_limit_stands(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, fake
) -> None:
    env = _env(tmp_path, redis_url, fake, DAILY_LOSS_LIMIT_USD="100")
    control(fake, "/_income", {"incomeType": "REALIZED_PNL", "income": "-150"})
    assert _cli(env, "protect", "--once").returncode == 1
    proc = _cli(env, "resume", "--reason", "go")
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("resume: DAILY_LOSS_LIMIT tripped today") and "--force" in line
    assert read_state(redis_client).state is TradingState.REDUCING
    proc = _cli(env, "resume", "--force", "--reason", "accepted the loss", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["to"] == "ACTIVE"
    assert _cli(env, "protect", "--once").returncode == 0


@pytest.mark.parametrize(
    ("over", "argv", "code", "needle"),
    [
        ({"BINANCE_API_KEY": ""}, [], 2, "BINANCE_API_KEY"),
        ({"PROTECTION_STALE_SECONDS": "60"}, ["--interval", "60"], 2, "--interval=60"),
        ({"PROTECTION_TRIP_STATE": "ACTIVE"}, [], 2, "PROTECTION_TRIP_STATE=ACTIVE"),
        ({"MAX_DRAWDOWN_PCT": "150"}, [], 2, "MAX_DRAWDOWN_PCT=150"),
        ({"CORE_KERNEL_REDIS_URL": "redis://127.0.0.1:1/0"}, [], 3, "redis unreachable"),
    ],
)
def test_cli_protect_bad_setups_are_one_line(
    tmp_path: Path, redis_url: str, fake, over: dict[str, str], argv: list[str], code: int, needle
) -> None:
    env = _env(tmp_path, redis_url, fake, **over)
    proc = _cli(env, "protect", "--once", *argv)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr and proc.stdout == ""


def test_cli_live_audits_and_protection_live_enforces(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, fake
) -> None:
    live = {"TRADING_MODE": "LIVE", "BINANCE_TESTNET": "false", "USE_BINANCE_TESTNET": "false"}
    env = _env(tmp_path, redis_url, fake, **live)
    assert _cli(env, "protect", "--once").returncode == 0
    account(fake, "8000")
    proc = _cli(env, "protect", "--once", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 and data["audit_only_trips"] == ["MAX_DRAWDOWN"]
    assert data["mode"] == "LIVE" and data["enforce"] is False and data["state"] == "ACTIVE"
    assert "GATE_AUDIT gate=PROTECTION" in proc.stderr
    assert read_state(redis_client).raw == {}
    env = _env(tmp_path, redis_url, fake, **live, PROTECTION_LIVE="true")
    proc = _cli(env, "protect", "--once", "--json")
    assert json.loads(proc.stdout)["new_trips"] == ["MAX_DRAWDOWN"]
    assert read_state(redis_client).state is TradingState.REDUCING


def test_cli_protect_loop_polls_until_sigterm(tmp_path: Path, redis_url: str, fake) -> None:
    env = _env(tmp_path, redis_url, fake)
    assert CORE_KERNEL
    proc = subprocess.Popen(
        [CORE_KERNEL, "protect", "--json", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "CORE_GATES_ENV": str(env),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        },
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proc.terminate()
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert all(json.loads(line)["state"] == "ACTIVE" for line in lines)


# --- what a trip does to the next intent ----------------------------------------------------------
@pytest.mark.parametrize(
    ("trip_state", "entry_reason"), [("REDUCING", "REDUCING_ONLY"), ("HALTED", "TRADING_HALTED")]
)
def test_an_intent_after_a_trip_is_held_and_nothing_reaches_the_exchange(
    redis_url: str, tmp_path: Path, trip_state: str, entry_reason: str
) -> None:
    pipe = Pipeline(redis_url, tmp_path)
    try:
        env = pipe.workdir / "core_gates.env"
        with env.open("a", encoding="utf-8") as fh:
            fh.write(f"PROTECTION_TRIP_STATE={trip_state}\nDAILY_LOSS_LIMIT_USD=50\n")
        cfg = load_config(env, environ={})
        w = Worker(
            pipe.client,
            cfg,
            TradingMode.TESTNET,
            from_config(cfg, testnet=True, timeout_s=2.0),
            consumer="w1:x",
            block_ms=100,
        )
        assert _cli(env, "protect", "--once").returncode == 0
        control(pipe.exchange, "/_income", {"incomeType": "REALIZED_PNL", "income": "-75"})
        assert _cli(env, "protect", "--once").returncode == 1
        assert read_state(pipe.client).state.value == trip_state
        entry = intent(1, pipe.run)
        assert streams.publish_intent_once(pipe.client, parse_intent(entry)) is not None
        w._run_entries(consume.read_new(w.raw, w.consumer, block_ms=None, count=100))
        (result,) = pipe.results()
        assert result["status"] == "gate_blocked" and result["primary"] == entry_reason
        assert pipe.exchange_orders() == []
        assert pipe.client.xrevrange(AUDIT, count=1)[0][1]["source"] == "protection"
        assert state_key() and protection_key()
    finally:
        pipe.close()


def test_a_resume_between_the_read_and_the_write_is_not_undone(
    redis_client: redis.Redis, fake
) -> None:
    """The operator resumes while a poll is deciding on the old record (old peak): the poll is
    decided again on the new one, so it neither re-trips at once nor brings the old peak back."""
    clock = Clock()
    p = protector(redis_client, fake, clock)
    account(fake, "12000")
    p.poll()
    account(fake, "10000")
    assert p.poll()["state"] == "REDUCING"

    class ResumingClock(Clock):
        done = False

        def __call__(self) -> float:
            if not self.done:
                self.done = True
                resume(redis_client, "race", who=WHO, clock=clock)
            return self.t

    p.clock = ResumingClock(clock.t + 30)
    data = p.poll()
    assert data["state"] == "ACTIVE" and data["new_trips"] == [], data
    assert data["hwm"] == Decimal("10000.00000000")
    assert record(redis_client)["hwm"] == "10000.00000000"
