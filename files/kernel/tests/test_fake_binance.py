"""The fake Binance Futures server over real HTTP: signatures, -4116, filters, fault switches."""

from __future__ import annotations

import socket
import subprocess
import sys
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


def client_for(server: FakeBinance, secret: str = DEFAULT_API_SECRET) -> Client:
    client = Client(DEFAULT_API_KEY, secret, ping=False)
    client.FUTURES_URL = server.base_url
    return client


def test_public_endpoints(fake):
    c = client_for(fake)
    assert c.futures_ping() == {}
    assert abs(c.futures_time()["serverTime"] - time.time() * 1000) < 5000
    info = {s["symbol"]: s for s in c.futures_exchange_info()["symbols"]}
    filters = {f["filterType"]: f for f in info["BTCUSDT"]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.10"
    assert filters["LOT_SIZE"]["stepSize"] == "0.001"
    assert filters["MIN_NOTIONAL"]["notional"] == "100"


def test_bad_signature_and_key_are_refused(fake):
    with pytest.raises(BinanceAPIException) as exc:
        client_for(fake, secret="wrong").futures_create_order(
            symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010", newClientOrderId="x1"
        )
    assert exc.value.code == -1022
    bad_key = Client("other", DEFAULT_API_SECRET, ping=False)
    bad_key.FUTURES_URL = fake.base_url
    with pytest.raises(BinanceAPIException) as exc:
        bad_key.futures_get_order(symbol="BTCUSDT", origClientOrderId="x1")
    assert exc.value.code == -2015
    assert fake.orders() == []


def test_order_roundtrip_and_lookup(fake):
    c = client_for(fake)
    order = c.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010", newClientOrderId="a:b/c"
    )
    assert order["status"] == "FILLED"
    got = c.futures_get_order(symbol="BTCUSDT", origClientOrderId="a:b/c")
    assert got["orderId"] == order["orderId"]
    with pytest.raises(BinanceAPIException) as exc:
        c.futures_get_order(symbol="BTCUSDT", origClientOrderId="nope")
    assert exc.value.code == -2013


def test_duplicate_id_among_open_orders_is_4116(fake):
    c = client_for(fake)
    kw = dict(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.010")
    c.futures_create_order(price="50000.0", newClientOrderId="dup-1", **kw)
    with pytest.raises(BinanceAPIException) as exc:
        c.futures_create_order(price="50000.0", newClientOrderId="dup-1", **kw)
    assert exc.value.code == -4116
    assert len(fake.orders()) == 1


def test_filled_order_id_is_not_protected_by_the_exchange(fake):
    # Why the adapter must look up instead of resending: a filled order is no longer "open".
    c = client_for(fake)
    kw = dict(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010")
    c.futures_create_order(newClientOrderId="m-1", **kw)
    c.futures_create_order(newClientOrderId="m-1", **kw)
    assert len(fake.orders()) == 2


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"quantity": "0.0105"}, -1111),  # step size
        ({"quantity": "0.001", "type": "LIMIT", "price": "60000.0"}, -4164),  # notional 60 < 100
        ({"quantity": "0.010", "type": "LIMIT", "price": "60000.05"}, -1111),  # tick size
        ({"quantity": "0.010", "symbol": "NOPEUSDT"}, -1121),
    ],
)
def test_filters_are_enforced(fake, params, code):
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "newClientOrderId": "f-1"}
    order.update(params)
    if order["type"] == "LIMIT":
        order["timeInForce"] = "GTC"
    with pytest.raises(BinanceAPIException) as exc:
        client_for(fake).futures_create_order(**order)
    assert exc.value.code == code


def test_algo_orders_keyed_by_client_algo_id(fake):
    c = client_for(fake)
    c.futures_create_order(
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_MARKET",
        quantity="0.010",
        stopPrice="59000.0",
        clientAlgoId="algo-1",
    )
    got = c.futures_get_order(symbol="BTCUSDT", clientAlgoId="algo-1")
    assert got["clientAlgoId"] == "algo-1"
    assert got["triggerPrice"] == "59000.0"


def test_fault_switches_over_http(fake):
    c = client_for(fake)
    assert control(fake, "/_fault", {"rate_limit": 1, "retry_after": 7})["rate_limit"] == 1
    with pytest.raises(BinanceAPIException) as exc:
        c.futures_ping()
    assert exc.value.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "7"
    c.futures_ping()  # only the next one

    control(fake, "/_fault", {"drop_after_accept": 1})
    with pytest.raises(requests.ConnectionError):
        c.futures_create_order(
            symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010", newClientOrderId="d-1"
        )
    control(fake, "/_fault", {"error_after_accept": 1})
    with pytest.raises(BinanceAPIException) as exc:
        c.futures_create_order(
            symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010", newClientOrderId="e-1"
        )
    assert exc.value.status_code == 503
    # both were accepted although the client never saw an answer
    orders = control(fake, "/_orders")
    assert [o["clientOrderId"] for o in orders] == ["d-1", "e-1"]

    control(fake, "/_fault", {"delay_ms": 300})
    t0 = time.monotonic()
    c.futures_ping()
    assert time.monotonic() - t0 >= 0.3

    with pytest.raises(urllib.error.HTTPError) as err:
        control(fake, "/_fault", {"explode": 1})
    assert err.value.code == 400
    control(fake, "/_reset", {"x": 1})
    assert control(fake, "/_orders") == []


def test_console_script_serves_and_stops(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "core_kernel.fake_binance", "--port", str(port)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/fapi/v1/ping", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.terminate()
    assert proc.wait(10) == 0
