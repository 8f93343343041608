"""The exchange adapter against the real fake-Binance HTTP server: one order per trace id."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from core_kernel.exchange import (
    FilterViolation,
    FuturesExchange,
    OrderRejected,
    OrderStatusUnknown,
    RateLimited,
)
from core_kernel.fake_binance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance
from core_kernel.streams import CLIENT_ORDER_ID_RE, client_order_id


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    server = FakeBinance().start()
    yield server
    server.stop()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def adapter(fake: FakeBinance, **kw) -> tuple[FuturesExchange, Sleeps]:
    sleeps = Sleeps()
    kw.setdefault("timeout_s", 2.0)
    ex = FuturesExchange(
        DEFAULT_API_KEY, DEFAULT_API_SECRET, base_url=fake.base_url, sleep=sleeps, **kw
    )
    return ex, sleeps


def btc(ex: FuturesExchange, trace_id: str, **kw):
    return ex.place_order(trace_id, "BTCUSDT", "BUY", "0.010", ref_price="60000", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_construction_makes_no_network_call():
    # Nothing listens on this port: a ping at construction would fail.
    url = f"http://127.0.0.1:{free_port()}/fapi"
    ex = FuturesExchange("k", "s", base_url=url)
    assert url == ex.client.FUTURES_URL
    assert ex.base_url == url


def test_testnet_url_without_a_base_url():
    ex = FuturesExchange("k", "s", testnet=True)
    assert "testnet" in ex.base_url


def test_missing_credentials_refused():
    with pytest.raises(ValueError, match="BINANCE_API_KEY"):
        FuturesExchange("", "s")


def test_places_with_deterministic_client_id(fake):
    ex, _ = adapter(fake)
    res = btc(ex, "trace-1")
    assert res.client_order_id == client_order_id("trace-1") == "trace-1"
    assert not res.recovered and res.status == "FILLED"
    long_id = "x" * 80
    res2 = btc(ex, long_id)
    assert CLIENT_ORDER_ID_RE.match(res2.client_order_id)
    assert res2.client_order_id == client_order_id(long_id)
    assert [o["clientOrderId"] for o in fake.orders()] == ["trace-1", res2.client_order_id]


@pytest.mark.parametrize("fault", ["drop_after_accept", "error_after_accept"])
def test_lost_answer_is_looked_up_not_resent(fake, fault):
    ex, sleeps = adapter(fake)
    fake.set_faults(**{fault: 1})
    res = btc(ex, f"lost-{fault}")
    assert res.recovered
    assert res.attempts == 2
    assert len(fake.orders()) == 1
    assert res.order_id == str(fake.orders()[0]["orderId"])
    assert fake.state.stats["order_queries"] == 1
    assert len(sleeps) == 1  # a short pause before the lookup, no tight loop


def test_timeout_is_looked_up_not_resent(fake):
    ex, _ = adapter(fake, timeout_s=0.3)
    ex.filters("BTCUSDT")
    fake.set_faults(delay_ms=800)
    t0 = time.monotonic()
    with pytest.raises(OrderStatusUnknown):
        btc(ex, "slow-1")  # every lookup times out too: status unknown, never a second order
    assert time.monotonic() - t0 < 10
    fake.set_faults(delay_ms=0)
    assert len(fake.orders()) == 1
    res = btc(ex, "slow-1", lookup_first=True)  # the retry later finds it
    assert res.recovered and len(fake.orders()) == 1


def test_duplicate_4116_returns_the_open_order(fake):
    ex, _ = adapter(fake)
    kw = dict(order_type="LIMIT", price="50000.0")
    first = ex.place_order("lim-1", "BTCUSDT", "BUY", "0.010", **kw)
    assert first.status == "NEW"
    again = ex.place_order("lim-1", "BTCUSDT", "BUY", "0.010", **kw)
    assert again.recovered and again.order_id == first.order_id
    assert len(fake.orders()) == 1


def test_lookup_first_finds_a_filled_order(fake):
    ex, _ = adapter(fake)
    btc(ex, "filled-1")
    res = btc(ex, "filled-1", lookup_first=True)
    assert res.recovered
    assert len(fake.orders()) == 1  # MARKET orders fill: -4116 would not have protected us


def test_lookup_first_sends_when_absent(fake):
    ex, _ = adapter(fake)
    res = btc(ex, "fresh-1", lookup_first=True)
    assert not res.recovered and res.events == ["absent:1", "created:1"]


def test_rate_limit_backs_off_per_retry_after_and_reports(fake):
    ex, sleeps = adapter(fake, max_backoff_s=5)
    ex.filters("BTCUSDT")
    fake.set_faults(rate_limit=2, retry_after=3)
    res = btc(ex, "rl-1")
    assert res.rate_limited == 2
    assert sleeps == [3.0, 3.0]
    assert len(fake.orders()) == 1


def test_rate_limit_is_bounded(fake):
    ex, sleeps = adapter(fake, max_attempts=3, max_backoff_s=2)
    ex.filters("BTCUSDT")
    fake.set_faults(ban=10, retry_after=120)
    with pytest.raises(RateLimited) as exc:
        btc(ex, "rl-2")
    assert exc.value.retry_after_s == 2  # capped
    assert sleeps == [2.0, 2.0]  # attempts - 1 waits, then report
    assert fake.orders() == []


@pytest.mark.parametrize(
    ("qty", "kw", "needle"),
    [
        ("0.0105", {"ref_price": "60000"}, "LOT_SIZE: qty 0.0105 is not a multiple of stepSize"),
        ("0.001", {"ref_price": "60000"}, "MIN_NOTIONAL: notional 60.000 < 100"),
        ("0.010", {"order_type": "LIMIT", "price": "60000.05"}, "PRICE_FILTER"),
        ("-1", {}, "qty='-1': must be a positive number"),
    ],
)
def test_filters_checked_before_sending(fake, qty, kw, needle):
    ex, _ = adapter(fake)
    with pytest.raises(FilterViolation) as exc:
        ex.place_order("flt", "BTCUSDT", "BUY", qty, **kw)
    assert needle in str(exc.value)
    assert fake.orders() == []
    assert fake.state.stats.get("orders_accepted", 0) == 0


def test_unknown_symbol_and_side(fake):
    ex, _ = adapter(fake)
    with pytest.raises(FilterViolation, match="symbol=DOGEUSDT: not listed"):
        ex.place_order("s", "DOGEUSDT", "BUY", "1", ref_price="1")
    with pytest.raises(FilterViolation, match="side='UP'"):
        ex.place_order("s", "BTCUSDT", "UP", "0.010", ref_price="60000")


def test_definite_rejection_is_not_retried(fake):
    ex = FuturesExchange(DEFAULT_API_KEY, "wrong-secret", base_url=fake.base_url)
    ex._filters["BTCUSDT"] = _btc_filters(fake)  # exchangeInfo is unsigned: prime it
    with pytest.raises(OrderRejected) as exc:
        btc(ex, "rej-1")
    assert exc.value.code == -1022
    assert fake.orders() == []


def _btc_filters(fake):
    ex, _ = adapter(fake)
    return ex.filters("BTCUSDT")


def test_conditional_order_uses_client_algo_id(fake):
    ex, _ = adapter(fake)
    fake.set_faults(drop_after_accept=1)
    res = ex.place_order(
        "stop-1", "BTCUSDT", "SELL", "0.010", order_type="STOP_MARKET", stop_price="59000.0"
    )
    assert res.recovered
    orders = fake.orders()
    assert len(orders) == 1 and orders[0]["clientAlgoId"] == "stop-1"
    assert res.order_id == str(orders[0]["algoId"])


def test_unreachable_exchange_is_unknown_after_bounded_attempts():
    url = f"http://127.0.0.1:{free_port()}/fapi"
    sleeps = Sleeps()
    ex = FuturesExchange("k", "s", base_url=url, max_attempts=3, sleep=sleeps)
    with pytest.raises(OrderStatusUnknown):
        ex.filters("BTCUSDT")
    assert len(sleeps) == 2


def test_filters_parse_futures_notional_key(fake):
    ex, _ = adapter(fake)
    f = ex.filters("SOLUSDT")
    assert (f.tick_size, f.step_size, f.min_notional) == (
        Decimal("0.0100"),
        Decimal("1"),
        Decimal("5"),
    )
