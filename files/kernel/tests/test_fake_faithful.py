"""The fake's unkind Binance behaviours, switched over HTTP and observed through python-binance."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException
from helpers import control

from core_kernel.fake_binance import DEFAULT_API_KEY, DEFAULT_API_SECRET, FakeBinance


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    server = FakeBinance().start()
    yield server
    server.stop()


def client_for(server: FakeBinance, recv_window: int = 5000) -> Client:
    client = Client(DEFAULT_API_KEY, DEFAULT_API_SECRET, ping=False)
    client.FUTURES_URL = server.base_url
    client.REQUEST_RECVWINDOW = recv_window
    client.REQUEST_TIMEOUT = 2
    return client


def market(c: Client, cid: str, **extra: str) -> dict:
    return c.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010", newClientOrderId=cid, **extra
    )


def code_of(fn) -> int:
    with pytest.raises(BinanceAPIException) as exc:
        fn()
    return int(exc.value.code)


def test_server_clock_offset_and_timestamp_both_ways(fake):
    c = client_for(fake)
    control(fake, "/_fault", {"clock_offset_ms": -600_000})
    assert c.futures_time()["serverTime"] < time.time() * 1000 - 590_000
    # our clock 10 min ahead of the server's: -1021 "ahead"
    assert code_of(lambda: market(c, "ahead")) == -1021
    control(fake, "/_fault", {"clock_offset_ms": 600_000})
    # 10 min behind: outside the recvWindow
    assert code_of(lambda: market(c, "behind")) == -1021
    # synced with the offset from /fapi/v1/time, the same request passes
    c.timestamp_offset = c.futures_time()["serverTime"] - int(time.time() * 1000)
    assert market(c, "synced")["status"] == "FILLED"
    assert [o["clientOrderId"] for o in fake.orders()] == ["synced"]


def test_request_that_reaches_the_engine_after_its_window_is_refused(fake):
    c = client_for(fake, recv_window=200)
    control(fake, "/_fault", {"engine_delay_ms": 400})
    assert code_of(lambda: market(c, "late")) == -1021
    assert fake.orders() == []
    control(fake, "/_fault", {"engine_delay_ms": 50})
    assert market(c, "in-time")["status"] == "FILLED"


def test_recv_window_over_60000_is_refused(fake):
    assert code_of(lambda: market(client_for(fake, recv_window=60001), "x")) == -1131


def test_late_visibility(fake):
    c = client_for(fake)
    control(fake, "/_fault", {"visibility_ms": 700})
    market(c, "slow")
    assert code_of(lambda: c.futures_get_order(symbol="BTCUSDT", origClientOrderId="slow")) == (
        -2013
    )
    time.sleep(0.8)
    assert c.futures_get_order(symbol="BTCUSDT", origClientOrderId="slow")["status"] == "FILLED"


@pytest.mark.parametrize(
    ("switch", "status", "code"),
    [("ack_1007", 408, -1007), ("ack_503", 503, -1000), ("ack_408", 408, -1006)],
)
def test_ambiguous_answer_then_late_execution(fake, switch, status, code):
    c = client_for(fake, recv_window=2000)
    control(fake, "/_fault", {switch: 1, "execute_after_ms": 500})
    with pytest.raises(BinanceAPIException) as exc:
        market(c, "amb")
    assert (exc.value.status_code, exc.value.code) == (status, code)
    # right after the ambiguous answer the exchange does not know the order ...
    assert code_of(lambda: c.futures_get_order(symbol="BTCUSDT", origClientOrderId="amb")) == (
        -2013
    )
    time.sleep(0.7)
    # ... and a moment later it is FILLED: a -2013 was no proof
    assert c.futures_get_order(symbol="BTCUSDT", origClientOrderId="amb")["status"] == "FILLED"
    assert control(fake, "/_stats")["stats"]["late_executed"] == 1


def test_dropped_connection_order_never_executes(fake):
    c = client_for(fake)
    control(fake, "/_fault", {"ack_drop": 1, "ambiguous_executes": 0})
    with pytest.raises((requests.RequestException, BinanceAPIException)):
        market(c, "gone")
    time.sleep(0.2)
    assert fake.orders() == []


def test_ambiguous_order_is_not_executed_after_its_window(fake):
    c = client_for(fake, recv_window=300)
    control(fake, "/_fault", {"ack_1007": 1, "execute_after_ms": 600})
    code_of(lambda: market(c, "expired"))
    time.sleep(0.8)
    assert fake.orders() == []
    assert control(fake, "/_stats")["stats"]["late_expired"] == 1


def test_query_failures_are_independent_of_new_order(fake):
    c = client_for(fake)
    market(c, "q1")
    control(fake, "/_fault", {"query_5xx": 1, "query_1021": 1, "query_403": 1})
    errors = []
    for _ in range(3):
        with pytest.raises(BinanceAPIException) as exc:
            c.futures_get_order(symbol="BTCUSDT", origClientOrderId="q1")
        errors.append((exc.value.status_code, exc.value.code))
    assert errors == [(503, -1000), (400, -1021), (403, 0)]
    assert market(c, "q2")["status"] == "FILLED"  # New Order was never affected
    assert c.futures_get_order(symbol="BTCUSDT", origClientOrderId="q1")["status"] == "FILLED"


def test_min_notional_exempts_reduce_only(fake):
    c = client_for(fake)
    small = {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.001"}
    # 0.001 x mark 60000 = 60 < 100: refused as an entry, accepted as reduce-only
    assert code_of(lambda: c.futures_create_order(newClientOrderId="e", **small)) == -4164
    got = c.futures_create_order(newClientOrderId="r", reduceOnly="true", **small)
    assert got["reduceOnly"] is True


def test_hedge_mode_position_side_and_reduce_only(fake):
    c = client_for(fake)
    assert c.futures_get_position_mode() == {"dualSidePosition": False}
    assert code_of(lambda: market(c, "h0", positionSide="LONG")) == -4061
    c.futures_change_position_mode(dualSidePosition="true")
    assert c.futures_get_position_mode() == {"dualSidePosition": True}
    assert code_of(lambda: market(c, "h1")) == -4061
    assert code_of(lambda: market(c, "h2", positionSide="LONG", reduceOnly="true")) == -1106
    assert market(c, "h3", positionSide="LONG")["positionSide"] == "LONG"


def test_algo_order_by_client_algo_id(fake):
    c = client_for(fake)
    c.futures_create_algo_order(
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_MARKET",
        quantity="0.010",
        triggerPrice="59000.0",
        clientAlgoId="algo-1",
    )
    assert c.futures_get_algo_order(symbol="BTCUSDT", clientAlgoId="algo-1")["algoStatus"] == "NEW"
    assert code_of(lambda: c.futures_get_algo_order(symbol="BTCUSDT", clientAlgoId="nope")) == (
        -2013
    )


def test_bad_switch_values_are_refused(fake):
    for body in ({"visibility_ms": -1}, {"ack_1007": "1"}, {"nope": 1}, {"dual_side": True}):
        with pytest.raises(urllib.error.HTTPError) as exc:
            control(fake, "/_fault", body)
        assert exc.value.code == 400
