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
    LeaseLost,
    NotSent,
    OrderRejected,
    OrderStatusUnknown,
    RateLimited,
)
from core_kernel.fake_binance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance


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


def test_places_under_the_given_client_id_after_a_lookup(fake):
    ex, _ = adapter(fake)
    res = btc(ex, "trace-1")
    assert res.client_order_id == "trace-1"
    assert not res.recovered and res.status == "FILLED"
    assert res.events == ["absent:0", "created:1"]
    assert fake.state.stats["order_queries"] == 1  # looked up before the first send
    with pytest.raises(FilterViolation, match="client_order_id"):
        btc(ex, "t-1\n")  # never "repaired": the caller's id or nothing
    assert [o["clientOrderId"] for o in fake.orders()] == ["trace-1"]


def test_sends_an_explicit_short_recv_window(fake):
    ex, _ = adapter(fake, recv_window_ms=1500)
    assert ex.client.REQUEST_RECVWINDOW == 1500
    # a server whose engine takes longer than the window refuses: the window really is sent
    fake.set_faults(engine_delay_ms=1700)
    with pytest.raises(NotSent):  # -1021 from the engine, again after the resync
        btc(ex, "rw-1")
    assert fake.orders() == []


def test_a_filled_order_is_found_not_sent_again(fake):
    ex, _ = adapter(fake)
    btc(ex, "filled-1")
    res = btc(ex, "filled-1")  # Redis lost everything: the exchange still knows
    assert res.recovered
    assert len(fake.orders()) == 1  # MARKET orders fill: -4116 would not have protected us


@pytest.mark.parametrize("fault", ["drop_after_accept", "error_after_accept"])
def test_lost_answer_is_unknown_never_resent(fake, fault):
    ex, _ = adapter(fake)
    fake.set_faults(**{fault: 1})
    with pytest.raises(OrderStatusUnknown) as exc:
        btc(ex, f"lost-{fault}")
    assert exc.value.not_before_ms is not None
    assert len(fake.orders()) == 1
    res = btc(ex, f"lost-{fault}", not_before_ms=exc.value.not_before_ms)
    assert res.recovered and res.order_id == str(fake.orders()[0]["orderId"])
    assert len(fake.orders()) == 1


@pytest.mark.parametrize("switch", ["ack_1007", "ack_503", "ack_408", "ack_drop"])
def test_ambiguous_send_with_late_execution_gives_one_order(fake, switch):
    """The issue's first double order: -2013 right after an ambiguous answer is no proof."""
    ex, _ = adapter(fake, recv_window_ms=1000)
    fake.set_faults(**{switch: 1, "execute_after_ms": 600, "visibility_ms": 300})
    with pytest.raises(OrderStatusUnknown) as exc:
        btc(ex, "amb-1")
    assert fake.orders() == []
    nb = exc.value.not_before_ms
    assert nb is not None
    # immediately after: the lookup says -2013, but the window is open: still unknown, no send
    with pytest.raises(OrderStatusUnknown):
        btc(ex, "amb-1", not_before_ms=nb)
    assert fake.orders() == []
    while ex.server_now_ms() <= nb:
        time.sleep(0.05)
    time.sleep(0.35)  # let the late order become visible
    res = btc(ex, "amb-1", not_before_ms=nb)
    assert res.recovered
    assert len(fake.orders()) == 1


def test_ambiguous_send_that_never_executes_is_resent_once_its_window_passed(fake):
    ex, _ = adapter(fake, recv_window_ms=500)
    fake.set_faults(ack_1007=1, ambiguous_executes=0)
    with pytest.raises(OrderStatusUnknown) as exc:
        btc(ex, "amb-2")
    nb = exc.value.not_before_ms
    assert nb is not None
    while ex.server_now_ms() <= nb:
        time.sleep(0.05)
    res = btc(ex, "amb-2", not_before_ms=nb)
    assert not res.recovered
    assert [o["clientOrderId"] for o in fake.orders()] == ["amb-2"]


def test_a_late_order_past_its_window_is_never_executed_and_resend_is_single(fake):
    ex, _ = adapter(fake, recv_window_ms=300)
    fake.set_faults(ack_503=1, execute_after_ms=1500)  # the engine gets it after the window
    with pytest.raises(OrderStatusUnknown) as exc:
        btc(ex, "amb-3")
    nb = exc.value.not_before_ms
    assert nb is not None
    while ex.server_now_ms() <= nb:
        time.sleep(0.05)
    btc(ex, "amb-3", not_before_ms=nb)
    time.sleep(1.5)
    assert len(fake.orders()) == 1
    assert fake.state.stats["late_expired"] == 1


@pytest.mark.parametrize("switch", ["query_5xx", "query_1021", "query_403"])
def test_any_lookup_error_is_unknown_never_a_rejection(fake, switch):
    ex, _ = adapter(fake, max_attempts=1)
    btc(ex, "q-1")
    fake.set_faults(**{switch: 5})
    with pytest.raises(OrderStatusUnknown):
        btc(ex, "q-1")
    assert len(fake.orders()) == 1


def test_lookup_1021_is_retried_once_after_a_resync(fake):
    ex, _ = adapter(fake)
    btc(ex, "q-2")
    fake.set_faults(query_1021=1)
    assert btc(ex, "q-2").recovered


@pytest.mark.parametrize("offset_ms", [600_000, -600_000])
def test_clock_skew_of_ten_minutes_is_synced_away(fake, offset_ms):
    ex, _ = adapter(fake)
    fake.set_faults(clock_offset_ms=offset_ms)
    res = btc(ex, f"skew{offset_ms}")
    assert not res.recovered
    assert ex.offset_ms is not None and abs(ex.offset_ms - offset_ms) < 1000


def test_skewed_local_clock_parameter_is_synced_away(fake):
    # the worker's own clock 10 minutes ahead (the clock parameter), the server's correct
    ex, _ = adapter(fake, clock=lambda: time.time() + 600)
    assert not btc(ex, "skew-local").recovered
    assert ex.offset_ms is not None and abs(ex.offset_ms + 600_000) < 1000


def test_clock_jump_after_sync_is_fixed_by_one_retry_after_1021(fake):
    ex, _ = adapter(fake)
    btc(ex, "pre")
    fake.set_faults(clock_offset_ms=-30_000)  # the server's clock moves after our sync
    res = btc(ex, "jump-1")  # the lookup gets -1021, resyncs once and goes on
    assert not res.recovered
    assert ex.offset_ms is not None and abs(ex.offset_ms + 30_000) < 1000
    assert len(fake.orders()) == 2


def test_fence_refusal_sends_nothing(fake):
    ex, _ = adapter(fake)
    with pytest.raises(LeaseLost):
        btc(ex, "fence-1", fence=lambda: False)
    assert fake.orders() == []


def test_rate_limited_lookup_is_unknown_and_sends_nothing(fake):
    ex, _ = adapter(fake)
    ex.sync_time()
    ex.filters("BTCUSDT")
    fake.set_faults(rate_limit=1, retry_after=3)
    with pytest.raises(OrderStatusUnknown):
        btc(ex, "rl-0")
    assert fake.orders() == []


def test_rate_limit_backs_off_per_retry_after_and_reports(fake):
    ex, sleeps = adapter(fake, max_backoff_s=5)
    fake.set_faults(order_rate_limit=2, retry_after=3)
    res = btc(ex, "rl-1")
    assert res.rate_limited == 2
    assert sleeps == [3.0, 3.0]
    assert [o["clientOrderId"] for o in fake.orders()] == ["rl-1"]


def test_rate_limit_wait_beyond_the_budget_is_not_slept(fake):
    ex, sleeps = adapter(fake, max_backoff_s=60)
    fake.set_faults(order_rate_limit=1, retry_after=20)
    with pytest.raises(RateLimited):
        btc(ex, "rl-2", budget_s=10)
    assert sleeps == []
    assert fake.orders() == []


def test_rate_limit_is_bounded(fake):
    ex, sleeps = adapter(fake, max_attempts=3, max_backoff_s=2)
    fake.set_faults(order_rate_limit=10, retry_after=120)
    with pytest.raises(RateLimited) as exc:
        btc(ex, "rl-3")
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


def test_reduce_only_exit_below_min_notional_is_sent(fake):
    ex, _ = adapter(fake)
    res = ex.place_order("exit-1", "BTCUSDT", "SELL", "0.001", ref_price="60000", reduce_only=True)
    assert not res.recovered
    assert fake.orders()[0]["reduceOnly"] is True


def test_hedge_mode_detected_and_position_side_sent(fake):
    fake.set_faults(dual_side=1)
    ex, _ = adapter(fake, position_mode="auto")
    ex.place_order("h-in", "BTCUSDT", "BUY", "0.010", ref_price="60000")
    ex.place_order("h-out", "BTCUSDT", "SELL", "0.010", ref_price="60000", reduce_only=True)
    ex.place_order("s-in", "BTCUSDT", "SELL", "0.010", ref_price="60000")
    sides = {o["clientOrderId"]: (o["side"], o["positionSide"]) for o in fake.orders()}
    assert sides == {
        "h-in": ("BUY", "LONG"),
        "h-out": ("SELL", "LONG"),
        "s-in": ("SELL", "SHORT"),
    }
    assert not any(o["reduceOnly"] for o in fake.orders())


def test_unknown_symbol_and_side(fake):
    ex, _ = adapter(fake)
    with pytest.raises(FilterViolation, match="symbol=DOGEUSDT: not listed"):
        ex.place_order("s", "DOGEUSDT", "BUY", "1", ref_price="1")
    with pytest.raises(FilterViolation, match="side='UP'"):
        ex.place_order("s", "BTCUSDT", "UP", "0.010", ref_price="60000")


def test_definite_rejection_of_a_send_is_not_retried(fake):
    ex, _ = adapter(fake)
    fake.set_faults(dual_side=1)  # we are configured one-way: Binance answers -4061
    with pytest.raises(OrderRejected) as exc:
        btc(ex, "rej-1")
    assert exc.value.code == -4061
    assert fake.orders() == []


def test_bad_signature_on_the_lookup_is_unknown_not_rejected(fake):
    ex = FuturesExchange(DEFAULT_API_KEY, "wrong-secret", base_url=fake.base_url)
    with pytest.raises(OrderStatusUnknown):
        btc(ex, "rej-2")
    assert fake.orders() == []


def test_conditional_order_uses_client_algo_id(fake):
    ex, _ = adapter(fake, recv_window_ms=300)
    fake.set_faults(drop_after_accept=1)
    kw = dict(order_type="STOP_MARKET", stop_price="59000.0")
    with pytest.raises(OrderStatusUnknown):
        ex.place_order("stop-1", "BTCUSDT", "SELL", "0.010", **kw)
    res = ex.place_order("stop-1", "BTCUSDT", "SELL", "0.010", **kw)
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
