"""Local fake of the Binance USD-M Futures REST API for tests and the lab (quantum-fake-binance).

A real HTTP server (stdlib ``ThreadingHTTPServer``) speaking the subset the exchange adapter uses:
``GET /fapi/v1/ping``, ``/fapi/v1/time``, ``/fapi/v1/exchangeInfo``, signed ``POST/GET
/fapi/v1/order`` and ``/fapi/v1/algoOrder``. Signatures are checked as Binance does (HMAC-SHA256
of the parameter string, ``X-MBX-APIKEY`` header). ``newClientOrderId`` must be unique among *open*
orders (-4116 otherwise); MARKET orders fill at once by default, so a blind resend after a lost
answer would create a second order - which is what the fault tests must catch.

Fault switches, set by ``POST /_fault`` (JSON) or the constructor. Counted switches apply to
the next N requests of their kind; the others hold while set:

* ``delay_ms`` every answer is delayed; ``rate_limit`` / ``ban``: 429 / 418 with
  ``Retry-After: retry_after``.
* ``drop_after_accept`` / ``error_after_accept``: the order is accepted, then the connection is
  dropped / answered 503.
* ``ack_1007`` / ``ack_503`` / ``ack_408`` / ``ack_drop``: New Order answered HTTP 408 -1007
  ("send status unknown"), 503 "Unknown error", HTTP 408 -1006 or a dropped connection,
  *before* executing; the order then executes ``execute_after_ms`` later when
  ``ambiguous_executes`` is 1 (default), or never when 0 (see ``_AMBIGUOUS_ANSWERS``).
* ``visibility_ms``: an accepted order is invisible to Query Order (-2013) for that long.
* ``query_5xx`` / ``query_1021`` / ``query_403``: Query Order fails (503, -1021, 403 WAF page)
  independently of New Order.
* ``engine_delay_ms``: time between a New Order's arrival and the matching engine.
* ``clock_offset_ms`` (may be negative): the server clock is the host clock plus this.
* ``order_rate_limit``: like ``rate_limit``, for New Order requests only.
* ``dual_side``: 1 = hedge mode (also ``POST /fapi/v1/positionSide/dual``).
* ``account_5xx`` / ``account_drop`` / ``account_garbage`` (issue 14, counted): the account
  reads (``GET /fapi/v2/account``, ``/fapi/v1/income``) answer 503, drop the connection, or
  answer 200 with balances that are not numbers.

The account (issue 14): ``GET /fapi/v2/account`` serves the balances set by ``POST /_account``
(``{"wallet": "10000", "unrealized": "0"}``, numbers as strings as Binance sends them; the
default is a 10000 USDT wallet and no position) and ``GET /fapi/v1/income`` the income entries
added by ``POST /_income`` (one entry or a list: ``incomeType``, ``income``, optional ``time``
ms - default now - and ``symbol``), filtered by ``incomeType``/``startTime``/``endTime``
(inclusive), oldest first, at most ``limit`` (default 100, max 1000) from ``startTime`` on.
* market data (issue 14): ``mark_5xx`` / ``position_5xx`` (counted) answer premiumIndex /
  positionRisk with 503; ``mark_garbage`` / ``position_garbage`` (held) answer numbers that
  are not numbers; ``mark_delay_ms`` / ``position_delay_ms`` delay only those answers (a
  client timeout); ``mark_stale_ms`` dates the mark price that much in the past.

Market data: ``GET /fapi/v1/premiumIndex`` (one symbol, or all without ``symbol``) and signed
``GET /fapi/v3/positionRisk`` (rows for symbols with a position, Binance's field names,
numbers as strings). A MARKET order that fills moves the position (BUY adds, SELL subtracts,
per ``positionSide``) at the mark price. ``POST /_market`` sets mark prices and positions
during a test: ``{"mark_price": {"ETHUSDT": "3500"}, "positions": {"ETHUSDT": "-0.5",
"BTCUSDT:LONG": "1"}}``.

Every signed request is checked against the server clock as Binance does: rejected with -1021
when its ``timestamp`` is more than 1000 ms ahead, or when ``timestamp + recvWindow`` has passed
- on arrival *and* again when the order reaches the engine (a delayed or ambiguous order whose
window passed is never executed). ``recvWindow`` defaults to 5000 and may not exceed 60000.
MIN_NOTIONAL (-4164) uses the price, trigger price or the symbol's mark price (MARKET) and
exempts ``reduceOnly`` orders. Hedge mode needs ``positionSide`` LONG/SHORT and refuses
``reduceOnly`` (-1106); one-way mode accepts only ``BOTH`` (or no ``positionSide``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

log = logging.getLogger("core_kernel.fake_binance")

DEFAULT_API_KEY = "lab-fake-key"
DEFAULT_API_SECRET = "lab-fake-secret"  # noqa: S105 - a published lab value, not a secret

CONDITIONAL_TYPES = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
ORDER_TYPES = frozenset({"MARKET", "LIMIT"})
FAULT_KEYS = (
    "delay_ms",
    "drop_after_accept",
    "error_after_accept",
    "rate_limit",
    "ban",
    "retry_after",
    "ack_1007",
    "ack_503",
    "ack_408",
    "ack_drop",
    "execute_after_ms",
    "ambiguous_executes",
    "visibility_ms",
    "query_5xx",
    "query_1021",
    "query_403",
    "engine_delay_ms",
    "clock_offset_ms",
    "dual_side",
    "order_rate_limit",
    "account_5xx",
    "account_drop",
    "account_garbage",
    "mark_5xx",
    "mark_garbage",
    "mark_delay_ms",
    "mark_stale_ms",
    "position_5xx",
    "position_garbage",
    "position_delay_ms",
)
# The only switch that may be negative: a server clock behind the host's.
SIGNED_KEYS = frozenset({"clock_offset_ms"})
AMBIGUOUS_KEYS = ("ack_1007", "ack_503", "ack_408", "ack_drop")
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
# Binance accepts a timestamp at most this far ahead of its clock.
MAX_AHEAD_MS = 1000
#: The account the fake serves until a test sets another (USDT).
DEFAULT_WALLET = Decimal("10000")


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    tick_size: str
    step_size: str
    min_qty: str
    max_qty: str
    min_notional: str
    mark_price: str = "0"

    def info(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "pair": self.symbol,
            "contractType": "PERPETUAL",
            "status": "TRADING",
            "baseAsset": self.symbol.removesuffix("USDT"),
            "quoteAsset": "USDT",
            "marginAsset": "USDT",
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": self.tick_size,
                    "maxPrice": "1000000",
                    "tickSize": self.tick_size,
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": self.min_qty,
                    "maxQty": self.max_qty,
                    "stepSize": self.step_size,
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": self.min_qty,
                    "maxQty": self.max_qty,
                    "stepSize": self.step_size,
                },
                {"filterType": "MIN_NOTIONAL", "notional": self.min_notional},
            ],
            "orderTypes": sorted(ORDER_TYPES | CONDITIONAL_TYPES),
        }


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec("BTCUSDT", "0.10", "0.001", "0.001", "1000", "100", "60000"),
    SymbolSpec("ETHUSDT", "0.01", "0.001", "0.001", "10000", "20", "3000"),
    SymbolSpec("SOLUSDT", "0.0100", "1", "1", "100000", "5", "150"),
    SymbolSpec("XRPUSDT", "0.0001", "0.1", "0.1", "10000000", "5", "0.6"),
)


@dataclass
class Faults:
    delay_ms: int = 0
    drop_after_accept: int = 0
    error_after_accept: int = 0
    rate_limit: int = 0
    ban: int = 0
    retry_after: int = 1
    ack_1007: int = 0
    ack_503: int = 0
    ack_408: int = 0
    ack_drop: int = 0
    execute_after_ms: int = 0
    ambiguous_executes: int = 1
    visibility_ms: int = 0
    query_5xx: int = 0
    query_1021: int = 0
    query_403: int = 0
    engine_delay_ms: int = 0
    clock_offset_ms: int = 0
    dual_side: int = 0
    order_rate_limit: int = 0
    account_5xx: int = 0
    account_drop: int = 0
    account_garbage: int = 0
    mark_5xx: int = 0
    mark_garbage: int = 0
    mark_delay_ms: int = 0
    mark_stale_ms: int = 0
    position_5xx: int = 0
    position_garbage: int = 0
    position_delay_ms: int = 0

    def to_dict(self) -> dict[str, int]:
        return {key: int(getattr(self, key)) for key in FAULT_KEYS}


@dataclass
class FakeState:
    """Everything the server knows; one lock guards it (requests are handled on threads)."""

    api_key: str = DEFAULT_API_KEY
    api_secret: str = DEFAULT_API_SECRET
    symbols: dict[str, SymbolSpec] = field(
        default_factory=lambda: {s.symbol: s for s in DEFAULT_SYMBOLS}
    )
    fill_market: bool = True
    faults: Faults = field(default_factory=Faults)
    orders: list[dict[str, Any]] = field(default_factory=list)
    algo_orders: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 1_000_000
    wallet: Decimal = DEFAULT_WALLET
    unrealized: Decimal = Decimal(0)
    income: list[dict[str, Any]] = field(default_factory=list)
    #: mark price per symbol (from the specs, changed by ``POST /_market``)
    marks: dict[str, Decimal] = field(default_factory=dict)
    #: (symbol, positionSide) -> signed positionAmt, entry price
    positions: dict[tuple[str, str], tuple[Decimal, Decimal]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.marks = {s: Decimal(spec.mark_price) for s, spec in self.symbols.items()}

    def now_ms(self) -> int:
        """The server clock: the host clock plus ``clock_offset_ms``."""
        return int(time.time() * 1000) + int(self.faults.clock_offset_ms)

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def take(self, name: str) -> bool:
        """Consume one use of a counted fault switch."""
        value = int(getattr(self.faults, name))
        if value > 0:
            setattr(self.faults, name, value - 1)
            self.count(f"fault_{name}")
            return True
        return False


class ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def _dec(params: dict[str, str], name: str, required: bool = True) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent")
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'") from None
    if not value.is_finite() or value <= 0:
        raise ApiError(400, -1100, f"Illegal value in parameter '{name}'")
    return value


def _multiple(value: Decimal, step: Decimal) -> bool:
    return step == 0 or value % step == 0


class FakeBinance:
    """Owns the HTTP server; ``start()`` serves on a thread, ``serve_forever()`` in the caller."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        fill_market: bool = True,
        faults: Faults | None = None,
    ) -> None:
        self.state = FakeState(api_key=api_key, api_secret=api_secret, fill_market=fill_market)
        if faults is not None:
            self.state.faults = faults
        handler = _make_handler(self.state)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What BINANCE_FUTURES_URL should be (python-binance appends /v1/...)."""
        return f"http://127.0.0.1:{self.port}/fapi"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeBinance:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # direct access for in-process tests ----------------------------------------------------
    def set_faults(self, **values: int) -> None:
        with self.state.lock:
            for key, value in values.items():
                if key not in FAULT_KEYS:
                    raise ValueError(
                        f"{key}: unknown fault switch (known: {', '.join(FAULT_KEYS)})"
                    )
                setattr(self.state.faults, key, int(value))

    def orders(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(o) for o in self.state.orders + self.state.algo_orders]


# --- request handling ---------------------------------------------------------------------------
def _make_handler(state: FakeState) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.state = state
    return Handler


class _Handler(BaseHTTPRequestHandler):
    state: FakeState
    protocol_version = "HTTP/1.1"
    server_version = "fake-binance/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # plumbing ------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY the client's delayed ACK
        # adds ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout): exactly the situation being simulated.
            self.close_connection = True

    def _error(self, exc: ApiError, headers: dict[str, str] | None = None) -> None:
        self._send(exc.status, {"code": exc.code, "msg": exc.msg}, headers)

    def _drop(self) -> None:
        """Close the TCP connection without an answer (the order was accepted)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _read_body(self) -> str:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length).decode("utf-8") if length else ""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self._read_body()
        path = parts.path.rstrip("/")
        try:
            if path.startswith("/_"):
                self._control(method, path, body)
                return
            with self.state.lock:
                self.state.count("requests")
                delay = self.state.faults.delay_ms
                if self.state.take("ban"):
                    raise _Limited(418, self.state.faults.retry_after)
                if self.state.take("rate_limit"):
                    raise _Limited(429, self.state.faults.retry_after)
            self._api(method, path, parts.query, body, delay)
        except _Limited as lim:
            code = -1003
            msg = (
                "Too many requests; current limit is exceeded."
                if lim.status == 429
                else ("Way too many requests; IP banned.")
            )
            self._send(lim.status, {"code": code, "msg": msg}, {"Retry-After": str(lim.after)})
        except ApiError as exc:
            self._error(exc)

    # control endpoints -----------------------------------------------------------------------
    def _control(self, method: str, path: str, body: str) -> None:
        state = self.state
        if path == "/_orders" and method == "GET":
            with state.lock:
                self._send(200, state.orders + state.algo_orders)
            return
        if path == "/_stats" and method == "GET":
            with state.lock:
                self._send(200, {"stats": dict(state.stats), "faults": state.faults.to_dict()})
            return
        if path == "/_fault" and method == "GET":
            with state.lock:
                self._send(200, state.faults.to_dict())
            return
        if path == "/_fault" and method == "POST":
            try:
                values = json.loads(body or "{}")
            except ValueError:
                raise ApiError(400, -1, "body: not JSON") from None
            if not isinstance(values, dict):
                raise ApiError(400, -1, "body: must be a JSON object")
            bad = [k for k in values if k not in FAULT_KEYS]
            if bad:
                raise ApiError(400, -1, f"{','.join(bad)}: unknown fault switch")
            for key, value in values.items():
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ApiError(400, -1, f"{key}: must be an integer")
                if value < 0 and key not in SIGNED_KEYS:
                    raise ApiError(400, -1, f"{key}: must be a non-negative integer")
            with state.lock:
                for key, value in values.items():
                    setattr(state.faults, key, value)
                self._send(200, state.faults.to_dict())
            return
        if path == "/_market" and method == "POST":
            with state.lock:
                self._send(200, _set_market(state, body))
            return
        if path == "/_reset" and method == "POST":
            with state.lock:
                state.positions.clear()
                state.marks = {s: Decimal(sp.mark_price) for s, sp in state.symbols.items()}
                state.orders.clear()
                state.algo_orders.clear()
                state.stats.clear()
                state.faults = Faults()
                state.wallet, state.unrealized = DEFAULT_WALLET, Decimal(0)
                state.income.clear()
                self._send(200, {"reset": True})
            return
        if path in ("/_account", "/_income") and method == "POST":
            self._control_account(path, body)
            return
        raise ApiError(404, -1, f"{method} {path}: no such control endpoint")

    def _control_account(self, path: str, body: str) -> None:
        state = self.state
        try:
            values = json.loads(body or "{}")
        except ValueError:
            raise ApiError(400, -1, "body: not JSON") from None
        if path == "/_account":
            if not isinstance(values, dict) or set(values) - {"wallet", "unrealized"}:
                raise ApiError(400, -1, "body: a JSON object with wallet and/or unrealized")
            parsed = {k: _control_dec(k, v) for k, v in values.items()}
            with state.lock:
                state.wallet = parsed.get("wallet", state.wallet)
                state.unrealized = parsed.get("unrealized", state.unrealized)
                self._send(200, _account(state))
            return
        entries = values if isinstance(values, list) else [values]
        added = []
        with state.lock:
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("incomeType"), str):
                    raise ApiError(400, -1, "entry: a JSON object with incomeType and income")
                raw_time = entry.get("time", state.now_ms())
                if not isinstance(raw_time, int) or isinstance(raw_time, bool):
                    raise ApiError(400, -1, "time: must be an integer (ms)")
                state.next_id += 1
                added.append(
                    {
                        "symbol": str(entry.get("symbol", "")),
                        "incomeType": entry["incomeType"],
                        "income": str(_control_dec("income", entry.get("income"))),
                        "asset": "USDT",
                        "info": entry["incomeType"],
                        "time": raw_time,
                        "tranId": state.next_id,
                        "tradeId": "",
                    }
                )
            state.income.extend(added)
            state.income.sort(key=lambda e: int(e["time"]))
            self._send(200, added)

    def _account_read(self, method: str, path: str, query: str, body: str, delay: int) -> None:
        state = self.state
        params = self._signed_params(query, body)
        with state.lock:
            state.count("account_reads")
            if state.take("account_5xx"):
                raise ApiError(503, -1000, "Unknown error, please check your request or try again.")
            drop = state.take("account_drop")
            garbage = state.take("account_garbage")
            if path == "/fapi/v2/account":
                answer: Any = _account(state)
                if garbage:
                    answer.update(totalMarginBalance="NaN", totalWalletBalance="1,000.00")
            else:
                answer = _income(state.income, params)
                if garbage:
                    answer = [{"incomeType": "REALIZED_PNL", "income": "lots", "time": "x"}]
        if drop:
            self._drop()
            return
        self._after_delay(delay, 200, answer)

    # API -----------------------------------------------------------------------------------
    def _signed_params(self, query: str, body: str) -> dict[str, str]:
        if self.headers.get("X-MBX-APIKEY") != self.state.api_key:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        pairs = parse_qsl(query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
        params = dict(pairs)
        signature = params.pop("signature", "")
        # python-binance signs "k=v&..." in the order sent, the symbol URL-quoted.
        payload = "&".join(
            f"{k}={quote(v) if k == 'symbol' else v}" for k, v in pairs if k != "signature"
        )
        expected = hmac.new(
            self.state.api_secret.encode(), payload.encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        window = _window(params)
        with self.state.lock:
            now = self.state.now_ms()
        _check_window(window, now)
        return params

    def _api(self, method: str, path: str, query: str, body: str, delay_ms: int) -> None:
        state = self.state
        if path == "/fapi/v1/ping" and method == "GET":
            self._after_delay(delay_ms, 200, {})
            return
        if path == "/fapi/v1/time" and method == "GET":
            with state.lock:
                now = state.now_ms()
            self._after_delay(delay_ms, 200, {"serverTime": now})
            return
        if path == "/fapi/v1/exchangeInfo" and method == "GET":
            with state.lock:
                info = [s.info() for s in state.symbols.values()]
                now = state.now_ms()
            self._after_delay(
                delay_ms, 200, {"timezone": "UTC", "serverTime": now, "symbols": info}
            )
            return
        if path == "/fapi/v1/positionSide/dual":
            params = self._signed_params(query, body)
            with state.lock:
                if method == "POST":
                    raw = params.get("dualSidePosition", "").lower()
                    if raw not in {"true", "false"}:
                        raise ApiError(400, -1102, "Mandatory parameter 'dualSidePosition'.")
                    state.faults.dual_side = int(raw == "true")
                    answer: dict[str, Any] = {"code": 200, "msg": "success"}
                else:
                    answer = {"dualSidePosition": bool(state.faults.dual_side)}
            self._after_delay(delay_ms, 200, answer)
            return
        if method == "GET" and path in ("/fapi/v2/account", "/fapi/v1/income"):
            self._account_read(method, path, query, body, delay_ms)
            return
        if path == "/fapi/v1/premiumIndex" and method == "GET":
            self._premium_index(dict(parse_qsl(query)), delay_ms)
            return
        if path == "/fapi/v3/positionRisk" and method == "GET":
            self._signed_params(query, body)
            self._position_risk(delay_ms)
            return
        if path in ("/fapi/v1/order", "/fapi/v1/algoOrder"):
            algo = path.endswith("algoOrder")
            params = self._signed_params(query, body)
            if method == "POST":
                self._new_order(params, algo, delay_ms)
                return
            if method == "GET":
                self._query_order(params, algo, delay_ms)
                return
        raise ApiError(404, -1, f"{method} {path}: not implemented by the fake")

    def _premium_index(self, params: dict[str, str], delay_ms: int) -> None:
        state = self.state
        symbol = params.get("symbol")
        with state.lock:
            state.count("mark_price_requests")
            if symbol is not None and symbol not in state.marks:
                raise ApiError(400, -1121, "Invalid symbol.")
            fail = state.take("mark_5xx")
            garbage = bool(state.faults.mark_garbage)
            delay = delay_ms + state.faults.mark_delay_ms
            stamp = state.now_ms() - state.faults.mark_stale_ms
            rows = [
                _premium_row(s, m, stamp, garbage)
                for s, m in state.marks.items()
                if symbol is None or s == symbol
            ]
        if fail:
            time.sleep(delay / 1000)
            raise ApiError(503, -1000, "Unknown error, please check your request or try again.")
        self._after_delay(delay, 200, rows[0] if symbol is not None else rows)

    def _position_risk(self, delay_ms: int) -> None:
        state = self.state
        with state.lock:
            state.count("position_requests")
            fail = state.take("position_5xx")
            garbage = bool(state.faults.position_garbage)
            delay = delay_ms + state.faults.position_delay_ms
            now = state.now_ms()
            rows = [
                _position_row(sym, side, amt, entry, state.marks.get(sym, Decimal(0)), now)
                for (sym, side), (amt, entry) in sorted(state.positions.items())
                if amt != 0
            ]
        if garbage:
            rows = [{**r, "notional": "n/a", "positionAmt": ""} for r in rows] or [{"oops": 1}]
        if fail:
            time.sleep(delay / 1000)
            raise ApiError(503, -1000, "Unknown error, please check your request or try again.")
        self._after_delay(delay, 200, rows)

    def _after_delay(self, delay_ms: int, status: int, body: Any) -> None:
        if delay_ms:
            time.sleep(delay_ms / 1000)
        self._send(status, body)

    def _new_order(self, params: dict[str, str], algo: bool, delay_ms: int) -> None:
        state = self.state
        with state.lock:
            if state.take("order_rate_limit"):
                raise _Limited(429, state.faults.retry_after)
        order = _validate_order(state, params, algo)
        window = _window(params)
        with state.lock:
            engine_delay = state.faults.engine_delay_ms
        if engine_delay:
            time.sleep(engine_delay / 1000)
        drop = error = False
        with state.lock:
            ambiguous = next((k for k in AMBIGUOUS_KEYS if state.take(k)), None)
            if ambiguous is None:
                # The engine checks the window again: a request that reached it late is refused.
                _check_window(window, state.now_ms())
                _accept(state, order, algo)
                drop = state.take("drop_after_accept")
                error = not drop and state.take("error_after_accept")
            else:
                executes = bool(state.faults.ambiguous_executes)
                later_ms = state.faults.execute_after_ms
                if executes and later_ms == 0:
                    _accept_if_in_window(state, order, algo, window)
                elif executes:
                    timer = threading.Timer(
                        later_ms / 1000, _late_accept, (state, order, algo, window)
                    )
                    timer.daemon = True
                    timer.start()
        if delay_ms:
            time.sleep(delay_ms / 1000)
        if ambiguous is not None:
            self._ambiguous(ambiguous)
            return
        if drop:
            self._drop()
            return
        if error:
            raise ApiError(503, -1000, "Unknown error, please check your request or try again.")
        self._send(200, _public(order))

    def _ambiguous(self, kind: str) -> None:
        if kind == "ack_drop":
            self._drop()
            return
        status, code, msg = _AMBIGUOUS_ANSWERS[kind]
        self._error(ApiError(status, code, msg))

    def _query_order(self, params: dict[str, str], algo: bool, delay_ms: int) -> None:
        state = self.state
        symbol = params.get("symbol", "")
        if algo:
            key, want = (
                ("algoId", params["algoId"])
                if "algoId" in params
                else ("clientAlgoId", params.get("clientAlgoId", ""))
            )
        else:
            key, want = (
                ("orderId", params["orderId"])
                if "orderId" in params
                else ("clientOrderId", params.get("origClientOrderId", ""))
            )
        if not want:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent.")
        with state.lock:
            state.count("order_queries")
            if state.take("query_5xx"):
                raise ApiError(503, -1000, "Unknown error, please check your request or try again.")
            if state.take("query_1021"):
                raise ApiError(
                    400, -1021, "Timestamp for this request is outside of the recvWindow."
                )
            if state.take("query_403"):
                raise ApiError(403, 0, "Forbidden (WAF)")
            # Visibility runs on the host's monotonic clock: a server clock switched backwards
            # must not hide orders.
            mono = time.monotonic()
            book = state.algo_orders if algo else state.orders
            # The newest visible order with that id (ids may be reused once an order is closed).
            found = [
                o
                for o in book
                if str(o.get(key)) == want
                and (algo or o["symbol"] == symbol)
                and o["_visible_at"] <= mono
            ]
        if not found:
            raise ApiError(400, -2013, "Order does not exist.")
        self._after_delay(delay_ms, 200, _public(found[-1]))


_AMBIGUOUS_ANSWERS: dict[str, tuple[int, int, str]] = {
    "ack_1007": (
        408,
        -1007,
        "Timeout waiting for response from backend server. "
        "Send status unknown; execution status unknown.",
    ),
    "ack_503": (503, -1000, "Unknown error, please check your request or try again later."),
    "ack_408": (
        408,
        -1006,
        "An unexpected response was received from the message bus. Execution status unknown.",
    ),
}


@dataclass(frozen=True, slots=True)
class _Window:
    timestamp: int
    recv_window: int

    @property
    def closes_at(self) -> int:
        return self.timestamp + self.recv_window


def _window(params: dict[str, str]) -> _Window:
    raw_ts = params.get("timestamp")
    if raw_ts is None:
        raise ApiError(400, -1102, "Mandatory parameter 'timestamp' was not sent")
    raw_rw = params.get("recvWindow", str(DEFAULT_RECV_WINDOW_MS))
    if not raw_ts.isdigit() or not raw_rw.isdigit():
        raise ApiError(400, -1100, "Illegal characters found in parameter 'timestamp'/'recvWindow'")
    recv_window = int(raw_rw)
    if recv_window > MAX_RECV_WINDOW_MS:
        raise ApiError(400, -1131, "recvWindow must be less than 60000")
    return _Window(int(raw_ts), recv_window)


def _check_window(window: _Window, now: int) -> None:
    if window.timestamp >= now + MAX_AHEAD_MS:
        raise ApiError(
            400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
        )
    if now - window.timestamp > window.recv_window:
        raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")


def _validate_order(state: FakeState, params: dict[str, str], algo: bool) -> dict[str, Any]:
    """Every check Binance makes before the engine; the order to book, not yet booked."""
    symbol = params.get("symbol", "")
    side = params.get("side", "")
    otype = params.get("type", "").upper()
    id_key = "clientAlgoId" if algo else "newClientOrderId"
    cid = params.get(id_key, "")
    with state.lock:
        spec = state.symbols.get(symbol)
        hedge = bool(state.faults.dual_side)
        mark = state.marks.get(symbol, Decimal(0))
    if spec is None:
        raise ApiError(400, -1121, "Invalid symbol.")
    if side not in {"BUY", "SELL"}:
        raise ApiError(400, -1117, "Invalid side.")
    if algo != (otype in CONDITIONAL_TYPES) or otype not in ORDER_TYPES | CONDITIONAL_TYPES:
        raise ApiError(400, -1116, "Invalid orderType.")
    if not cid or len(cid) > 36:
        raise ApiError(400, -4015, "Client order id length should not be more than 36 chars")
    position_side = params.get("positionSide", "BOTH")
    if hedge and position_side not in {"LONG", "SHORT"}:
        raise ApiError(400, -4061, "Order's position side does not match user's setting.")
    if not hedge and position_side != "BOTH":
        raise ApiError(400, -4061, "Order's position side does not match user's setting.")
    if hedge and "reduceOnly" in params:
        raise ApiError(400, -1106, "Parameter 'reduceOnly' sent when not required.")
    reduce_only = params.get("reduceOnly", "false").lower() == "true"
    qty = _dec(params, "quantity")
    assert qty is not None
    price = _dec(params, "price", required=otype == "LIMIT")
    trigger = _dec(params, "triggerPrice", required=algo)
    if not _multiple(qty, Decimal(spec.step_size)) or qty < Decimal(spec.min_qty):
        raise ApiError(400, -1111, "Precision is over the maximum defined for this asset.")
    for value in (price, trigger):
        if value is not None and not _multiple(value, Decimal(spec.tick_size)):
            raise ApiError(400, -1111, "Precision is over the maximum defined for this asset.")
    ref = price or trigger or (mark if mark > 0 else None)
    if not reduce_only and ref is not None and qty * ref < Decimal(spec.min_notional):
        raise ApiError(
            400,
            -4164,
            f"Order's notional must be no smaller than {spec.min_notional} "
            "(unless you choose reduce only).",
        )
    order: dict[str, Any] = {
        "symbol": symbol,
        "side": side,
        "type": otype,
        "origQty": str(qty),
        "price": str(price or 0),
        "reduceOnly": reduce_only,
        "positionSide": position_side,
    }
    if algo:
        order.update(
            {
                "clientAlgoId": cid,
                "algoType": "CONDITIONAL",
                "orderType": otype,
                "triggerPrice": str(trigger),
                "algoStatus": "NEW",
            }
        )
    else:
        order["clientOrderId"] = cid
    return order


def _accept(state: FakeState, order: dict[str, Any], algo: bool) -> None:
    """Book ``order`` (caller holds the lock); -4116 if its id is among the open orders."""
    book = state.algo_orders if algo else state.orders
    id_key = id_key_out(algo)
    cid = order[id_key]
    if any(o.get(id_key) == cid and o["_open"] for o in book):
        raise ApiError(400, -4116, "ClientOrderId is duplicated.")
    now = state.now_ms()
    state.next_id += 1
    filled = not algo and order["type"] == "MARKET" and state.fill_market
    order["updateTime"] = now
    order["_open"] = not filled
    order["_visible_at"] = time.monotonic() + state.faults.visibility_ms / 1000
    if algo:
        order.update({"algoId": state.next_id, "createTime": now})
    else:
        order.update(
            {
                "orderId": state.next_id,
                "status": "FILLED" if filled else "NEW",
                "executedQty": order["origQty"] if filled else "0",
                "time": now,
            }
        )
    book.append(order)
    state.count("orders_accepted")
    if filled:
        _fill_position(state, order)


def _fill_position(state: FakeState, order: dict[str, Any]) -> None:
    """A filled order moves its position at the mark price (caller holds the lock)."""
    key = (order["symbol"], order["positionSide"])
    qty = Decimal(order["origQty"])
    delta = qty if order["side"] == "BUY" else -qty
    mark = state.marks.get(order["symbol"], Decimal(0))
    amt, entry = state.positions.get(key, (Decimal(0), Decimal(0)))
    new = amt + delta
    if new == 0:
        entry = Decimal(0)
    elif amt == 0 or (amt > 0) != (new > 0):
        entry = mark
    elif abs(new) > abs(amt):
        entry = (abs(amt) * entry + qty * mark) / abs(new)
    state.positions[key] = (new, entry)


def _premium_row(symbol: str, mark: Decimal, stamp: int, garbage: bool) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "markPrice": "NaN" if garbage else f"{mark:f}",
        "indexPrice": f"{mark:f}",
        "estimatedSettlePrice": f"{mark:f}",
        "lastFundingRate": "0.00010000",
        "interestRate": "0.00010000",
        "nextFundingTime": (stamp // 28_800_000 + 1) * 28_800_000,
        "time": "yesterday" if garbage else stamp,
    }


def _position_row(  # noqa: PLR0917 - one row's parts
    symbol: str, side: str, amt: Decimal, entry: Decimal, mark: Decimal, now: int
) -> dict[str, Any]:
    notional = amt * mark
    return {
        "symbol": symbol,
        "positionSide": side,
        "positionAmt": f"{amt:f}",
        "entryPrice": f"{entry:f}",
        "breakEvenPrice": f"{entry:f}",
        "markPrice": f"{mark:f}",
        "unRealizedProfit": f"{(mark - entry) * amt:f}",
        "liquidationPrice": "0",
        "isolatedMargin": "0",
        "notional": f"{notional:f}",
        "marginAsset": "USDT",
        "isolatedWallet": "0",
        "initialMargin": "0",
        "maintMargin": "0",
        "positionInitialMargin": "0",
        "openOrderInitialMargin": "0",
        "adl": 0,
        "bidNotional": "0",
        "askNotional": "0",
        "updateTime": now,
    }


def _set_market(state: FakeState, body: str) -> dict[str, Any]:
    """``POST /_market`` (caller holds the lock): set mark prices and positions."""
    try:
        values = json.loads(body or "{}")
    except ValueError:
        raise ApiError(400, -1, "body: not JSON") from None
    if not isinstance(values, dict) or set(values) - {"mark_price", "positions"}:
        raise ApiError(400, -1, "body: an object with mark_price and/or positions")
    marks, positions = values.get("mark_price", {}), values.get("positions", {})
    if not isinstance(marks, dict) or not isinstance(positions, dict):
        raise ApiError(400, -1, "mark_price, positions: objects of symbol -> decimal string")
    try:
        new_marks = {str(k): Decimal(str(v)) for k, v in marks.items()}
        new_pos = {str(k): Decimal(str(v)) for k, v in positions.items()}
    except InvalidOperation:
        raise ApiError(400, -1, "mark_price, positions: values must be decimal strings") from None
    for sym, mark in new_marks.items():
        if sym not in state.symbols or not mark.is_finite() or mark <= 0:
            raise ApiError(400, -1, f"mark_price {sym}: a listed symbol and a price > 0")
    for key, amt in new_pos.items():
        sym, _, side = key.partition(":")
        if sym not in state.symbols or side not in {"", "LONG", "SHORT"} or not amt.is_finite():
            raise ApiError(400, -1, f"positions {key}: SYMBOL or SYMBOL:LONG/SHORT -> amount")
    state.marks.update(new_marks)
    for key, amt in new_pos.items():
        sym, _, side = key.partition(":")
        state.positions[(sym, side or "BOTH")] = (amt, state.marks[sym] if amt else Decimal(0))
    return {
        "mark_price": {k: f"{v:f}" for k, v in state.marks.items()},
        "positions": {f"{s}:{p}": f"{a:f}" for (s, p), (a, _) in state.positions.items()},
    }


def _accept_if_in_window(
    state: FakeState, order: dict[str, Any], algo: bool, window: _Window
) -> None:
    """An ambiguous order reaching the engine: booked only while its recvWindow is open."""
    if state.now_ms() - window.timestamp > window.recv_window:
        state.count("late_expired")
        return
    try:
        _accept(state, order, algo)
    except ApiError:
        state.count("late_rejected")
        return
    state.count("late_executed")


def _late_accept(state: FakeState, order: dict[str, Any], algo: bool, window: _Window) -> None:
    with state.lock:
        _accept_if_in_window(state, order, algo, window)


def _control_dec(name: str, value: Any) -> Decimal:
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise ApiError(400, -1, f"{name}: not a number") from None
    if not out.is_finite():
        raise ApiError(400, -1, f"{name}: not a finite number")
    return out


def _money(value: Decimal) -> str:
    return f"{value:.8f}"


def _account(state: FakeState) -> dict[str, Any]:
    """Account Information V2, single-asset mode, USDT only (caller holds the lock)."""
    wallet, upnl = state.wallet, state.unrealized
    margin = wallet + upnl
    zero = _money(Decimal(0))
    return {
        "feeTier": 0,
        "canTrade": True,
        "canDeposit": True,
        "canWithdraw": True,
        "updateTime": 0,
        "multiAssetsMargin": False,
        "totalInitialMargin": zero,
        "totalMaintMargin": zero,
        "totalWalletBalance": _money(wallet),
        "totalUnrealizedProfit": _money(upnl),
        "totalMarginBalance": _money(margin),
        "totalPositionInitialMargin": zero,
        "totalOpenOrderInitialMargin": zero,
        "totalCrossWalletBalance": _money(wallet),
        "totalCrossUnPnl": _money(upnl),
        "availableBalance": _money(margin),
        "maxWithdrawAmount": _money(margin),
        "assets": [
            {
                "asset": "USDT",
                "walletBalance": _money(wallet),
                "unrealizedProfit": _money(upnl),
                "marginBalance": _money(margin),
                "maintMargin": zero,
                "initialMargin": zero,
                "crossWalletBalance": _money(wallet),
                "crossUnPnl": _money(upnl),
                "availableBalance": _money(margin),
                "maxWithdrawAmount": _money(margin),
                "updateTime": 0,
            }
        ],
        "positions": [],
    }


def _income(entries: list[dict[str, Any]], params: dict[str, str]) -> list[dict[str, Any]]:
    """Get Income History: inclusive time bounds, oldest first, ``limit`` from ``startTime``."""
    try:
        start = int(params.get("startTime", "0"))
        end = int(params.get("endTime", str(2**62)))
        limit = int(params.get("limit", "100"))
    except ValueError:
        raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
    kind = params.get("incomeType")
    found = [
        dict(e)
        for e in entries
        if start <= int(e["time"]) <= end and (kind is None or e["incomeType"] == kind)
    ]
    return found[:limit]


def id_key_out(algo: bool) -> str:
    return "clientAlgoId" if algo else "clientOrderId"


def _public(order: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in order.items() if not k.startswith("_")}


class _Limited(Exception):
    def __init__(self, status: int, after: int) -> None:
        super().__init__(status)
        self.status = status
        self.after = after


# --- console entry ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quantum-fake-binance",
        description="Local fake Binance USD-M Futures REST server (tests and lab only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET)
    parser.add_argument(
        "--open-market-orders",
        action="store_true",
        help="leave MARKET orders NEW (open) instead of filling them",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(levelname)s %(name)s %(message)s",
    )
    try:
        server = FakeBinance(
            args.host,
            args.port,
            api_key=args.api_key,
            api_secret=args.api_secret,
            fill_market=not args.open_market_orders,
        )
    except OSError as exc:
        print(f"--port={args.port}: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("FAKE_BINANCE_LISTENING host=%s port=%d", args.host, server.port)
    server.httpd.serve_forever()
    server.httpd.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
