"""Binance USD-M Futures adapter on python-binance: an ambiguous attempt is UNKNOWN until proven.

* The client order id (``clientAlgoId`` for conditional orders) is given by the caller - the one
  admit stored with the decision - and is the same on every attempt and in every process.
* Before the first send of every call the id is looked up (Query Order, one request weight):
  the exchange, not Redis, knows whether it was placed, so Redis state loss or an expired dedup
  key cannot produce a second order. Any error on a lookup (5xx, -1021, 403, timeout) is
  ``OrderStatusUnknown``, never a rejection; only -2013 means "not there (yet)".
* Time: the offset to the server clock comes from ``/fapi/v1/time`` (refreshed every
  ``time_sync_s`` and once after a -1021) and every signed request carries an explicit
  ``recvWindow``. A request is executable on the exchange only until its timestamp +
  recvWindow on the server clock, so that instant, ``OrderStatusUnknown.not_before_ms``, is
  when an ambiguous attempt can no longer execute.
* A timeout, a dropped connection, a 5xx, 408, -1006 or -1007 is never answered by a resend in
  the same call: the call raises ``OrderStatusUnknown(not_before_ms=...)``. A later call with
  ``not_before_ms`` looks the id up again and sends (with the same id) only when the server
  clock has passed it and the order is still not found.
* 429/418 (the request was refused, not executed) wait ``Retry-After`` only while the wait
  and the next attempt fit in ``budget_s``; otherwise ``RateLimited``. -1021 on a send means it
  was refused too: resync once and retry; a second -1021 is ``NotSent``.
* ``fence()`` is called right before every send attempt (the worker's lease renewal); False
  means another process may own the intent now, and nothing is sent (``LeaseLost``).
* ``exchangeInfo`` filters are checked before anything is sent; reduce-only orders are exempt
  from MIN_NOTIONAL as on Binance. Position mode: ``oneway`` sends ``reduceOnly``; ``hedge``
  sends ``positionSide`` (LONG/SHORT, the side of the position opened or closed) and never
  ``reduceOnly`` (Binance answers -1106); ``auto`` asks ``/fapi/v1/positionSide/dual`` once.
* ``Client(..., ping=False)``: constructing the adapter makes no network call; the base URL is
  set on the instance (python-binance reads ``FUTURES_URL`` on every call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException

from core_kernel.intent import CLIENT_ORDER_ID_RE
from core_kernel.log import kv

log = logging.getLogger("core_kernel.exchange")

CONDITIONAL_TYPES = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
_SIDES = {"BUY": "BUY", "LONG": "BUY", "SELL": "SELL", "SHORT": "SELL"}
DUPLICATE_ID = -4116
ORDER_NOT_FOUND = -2013
TIMESTAMP_OUTSIDE = -1021
# Binance's "execution status unknown" codes; with any 5xx or 408 they never mean "not placed".
UNKNOWN_CODES = frozenset({-1000, -1006, -1007})
POSITION_MODES = ("auto", "oneway", "hedge")


class ExchangeError(Exception):
    """Base class; ``reason`` is a short code for results and logs."""

    reason = "EXCHANGE_ERROR"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FilterViolation(ExchangeError):
    """The order breaks an exchangeInfo filter; nothing was sent."""

    reason = "EXCHANGE_FILTER"


class OrderRejected(ExchangeError):
    """The exchange answered a definite no (4xx other than rate limits and -4116)."""

    reason = "EXCHANGE_REJECTED"

    def __init__(self, detail: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status


class RateLimited(ExchangeError):
    """429/418 on every attempt; the caller should retry later, not now."""

    reason = "EXCHANGE_RATE_LIMITED"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class OrderStatusUnknown(ExchangeError):
    """The order may exist or may still execute; retry later with the same id.

    ``not_before_ms`` (server clock, or None): an attempt of ours may execute until then, so no
    resend before it, whatever a lookup says.
    """

    reason = "EXCHANGE_UNKNOWN"

    def __init__(self, detail: str, not_before_ms: int | None = None) -> None:
        super().__init__(detail)
        self.not_before_ms = not_before_ms


class NotSent(ExchangeError):
    """Nothing was executed and nothing can execute (budget, clock): retry later."""

    reason = "EXCHANGE_NOT_SENT"


class LeaseLost(NotSent):
    """The fence said no right before a send: another process may own the intent."""

    reason = "LEASE_LOST"


@dataclass(frozen=True, slots=True)
class SymbolFilters:
    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> SymbolFilters:
        by_type = {f.get("filterType"): f for f in info.get("filters", [])}
        price = by_type.get("PRICE_FILTER", {})
        lot = by_type.get("LOT_SIZE", {})
        notional = by_type.get("MIN_NOTIONAL", {})
        return cls(
            symbol=str(info["symbol"]),
            tick_size=Decimal(str(price.get("tickSize", "0"))),
            step_size=Decimal(str(lot.get("stepSize", "0"))),
            min_qty=Decimal(str(lot.get("minQty", "0"))),
            max_qty=Decimal(str(lot.get("maxQty", "0"))),
            # Futures call the field "notional" (spot: "minNotional").
            min_notional=Decimal(str(notional.get("notional", notional.get("minNotional", "0")))),
        )

    def problems(
        self,
        qty: Decimal,
        price: Decimal | None,
        ref_price: Decimal | None,
        *,
        reduce_only: bool = False,
    ) -> list[str]:
        out: list[str] = []
        if self.step_size > 0 and qty % self.step_size != 0:
            out.append(f"LOT_SIZE: qty {qty} is not a multiple of stepSize {self.step_size}")
        if qty < self.min_qty:
            out.append(f"LOT_SIZE: qty {qty} < minQty {self.min_qty}")
        if self.max_qty > 0 and qty > self.max_qty:
            out.append(f"LOT_SIZE: qty {qty} > maxQty {self.max_qty}")
        if price is not None and self.tick_size > 0 and price % self.tick_size != 0:
            out.append(
                f"PRICE_FILTER: price {price} is not a multiple of tickSize {self.tick_size}"
            )
        ref = price if price is not None else ref_price
        # Binance exempts reduce-only orders (-4164 "... unless you choose reduce only").
        if not reduce_only and ref is not None and qty * ref < self.min_notional:
            out.append(
                f"MIN_NOTIONAL: notional {qty * ref} < {self.min_notional} (qty {qty} x {ref})"
            )
        return out


@dataclass(slots=True)
class OrderResult:
    """``recovered``: the order was found by its client id, not created by this call's answer."""

    client_order_id: str
    order: dict[str, Any]
    recovered: bool
    attempts: int
    rate_limited: int = 0
    events: list[str] = field(default_factory=list)

    @property
    def order_id(self) -> str:
        return str(self.order.get("orderId", self.order.get("algoId", "")))

    @property
    def status(self) -> str:
        return str(self.order.get("status", self.order.get("algoStatus", "")))


def _decimal(name: str, value: Any) -> Decimal:
    try:
        out = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise FilterViolation(f"{name}={value!r}: not a number") from None
    if not out.is_finite() or out <= 0:
        raise FilterViolation(f"{name}={value!r}: must be a positive number")
    return out


@dataclass(frozen=True, slots=True)
class _Order:
    cid: str
    symbol: str
    algo: bool
    params: dict[str, Any]


class FuturesExchange:
    """One python-binance client; thread-safe as far as requests' session is (one per worker)."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        base_url: str | None = None,
        testnet: bool = False,
        timeout_s: float = 5.0,
        max_attempts: int = 3,
        max_backoff_s: float = 30.0,
        retry_pause_s: float = 0.2,
        recv_window_ms: int = 5000,
        time_sync_s: float = 60.0,
        position_mode: str = "oneway",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("BINANCE_API_KEY/BINANCE_API_SECRET: missing (orders are signed)")
        if max_attempts < 1:
            raise ValueError("max_attempts: must be >= 1")
        if not 1 <= recv_window_ms <= 60000:
            raise ValueError(f"recv_window_ms={recv_window_ms}: must be 1..60000 (Binance)")
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode={position_mode!r}: must be one of {POSITION_MODES}")
        # ping=False: no network call here; python-binance would ping the spot API otherwise.
        self.client = Client(api_key, api_secret, testnet=testnet and not base_url, ping=False)
        if base_url:
            # Read on every futures call; python-binance has no constructor argument for it.
            self.client.FUTURES_URL = base_url.rstrip("/")
        self.client.REQUEST_TIMEOUT = timeout_s
        # python-binance's default is 10 s on every signed request; a short window bounds how
        # long an ambiguous request can still execute.
        self.client.REQUEST_RECVWINDOW = recv_window_ms
        self.base_url = base_url or (
            self.client.FUTURES_TESTNET_URL if testnet else self.client.FUTURES_URL
        )
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.retry_pause_s = retry_pause_s
        self.recv_window_ms = recv_window_ms
        self.time_sync_s = time_sync_s
        self.position_mode = position_mode
        self.clock = clock
        self.sleep = sleep
        #: Told (HTTP status or None for a transport error, Binance code or None) about every
        #: error answer, retried ones too: the worker's metrics count what the exchange said.
        self.on_error: Callable[[int | None, int | None], None] | None = None
        self.offset_ms: int | None = None
        self._synced_at = 0.0
        self._server_at_sync = 0
        self._filters: dict[str, SymbolFilters] = {}
        self._hedge: bool | None = {"oneway": False, "hedge": True}.get(position_mode)
        self._lock = threading.Lock()

    # time -----------------------------------------------------------------------------------
    def sync_time(self) -> int:
        """Measure the server clock's offset to ``clock`` (ms) and sign with it from now on."""
        t0 = self.clock()
        server = int(self._call(self.client.futures_time)["serverTime"])
        t1 = self.clock()
        offset = server - int((t0 + t1) / 2 * 1000)
        # python-binance stamps requests with time.time() + timestamp_offset; ``clock`` may be
        # another clock (a test's skewed one), so fold the difference into the offset.
        self.client.timestamp_offset = offset + int((self.clock() - time.time()) * 1000)
        self.offset_ms = offset
        # Deadlines are compared on the server clock as extrapolated with the monotonic clock:
        # a step of the local wall clock (NTP) must not make a window look closed early.
        self._synced_at = time.monotonic()
        self._server_at_sync = server + int((t1 - t0) / 2 * 1000)
        log.info(kv("EXCHANGE_TIME_SYNC", {"offset_ms": offset, "rtt_ms": int((t1 - t0) * 1000)}))
        return offset

    def server_now_ms(self) -> int:
        """The exchange's clock as we estimate it (syncing first when due)."""
        if self.offset_ms is None or time.monotonic() - self._synced_at > self.time_sync_s:
            self.sync_time()
        return self._estimate_ms()

    def _estimate_ms(self) -> int:
        return self._server_at_sync + int((time.monotonic() - self._synced_at) * 1000)

    # account --------------------------------------------------------------------------------
    def hedge_mode(self) -> bool:
        """True for a hedge-mode account (configured, or asked once for ``auto``)."""
        if self._hedge is None:
            self.server_now_ms()
            answer = self._call(self.client.futures_get_position_mode)
            self._hedge = bool(answer.get("dualSidePosition"))
            log.info(kv("EXCHANGE_POSITION_MODE", {"hedge": self._hedge}))
        return self._hedge

    def account(self) -> Any:
        """Account Information V2 (``GET /fapi/v2/account``, python-binance ``futures_account``),
        as the exchange sent it: the caller validates (issue 14, protections)."""
        self.server_now_ms()
        return self._call(self.client.futures_account)

    def income(self, start_ms: int, end_ms: int, limit: int = 1000) -> Any:
        """Get Income History (``GET /fapi/v1/income``, ``futures_income_history``), all types,
        ``startTime``/``endTime`` inclusive; unvalidated, like ``account``."""
        self.server_now_ms()
        return self._call(
            lambda: self.client.futures_income_history(
                startTime=start_ms, endTime=end_ms, limit=limit
            )
        )

    # exchangeInfo ---------------------------------------------------------------------------
    def filters(self, symbol: str, *, refresh: bool = False) -> SymbolFilters:
        with self._lock:
            cached = None if refresh else self._filters.get(symbol)
        if cached is not None:
            return cached
        info = self._call(self.client.futures_exchange_info)
        table = {str(s["symbol"]): SymbolFilters.from_info(s) for s in info.get("symbols", [])}
        with self._lock:
            self._filters = table
        if symbol not in table:
            raise FilterViolation(f"symbol={symbol}: not listed in exchangeInfo")
        return table[symbol]

    def check(
        self,
        symbol: str,
        qty: Decimal,
        price: Decimal | None,
        ref_price: Decimal | None,
        *,
        reduce_only: bool = False,
    ) -> None:
        problems = self.filters(symbol).problems(qty, price, ref_price, reduce_only=reduce_only)
        if problems:
            raise FilterViolation(f"symbol={symbol}: " + "; ".join(problems))

    # orders ---------------------------------------------------------------------------------
    def place_order(
        self,
        client_order_id: str,
        symbol: str,
        side: str,
        qty: Any,
        *,
        order_type: str = "MARKET",
        price: Any = None,
        ref_price: Any = None,
        stop_price: Any = None,
        reduce_only: bool = False,
        not_before_ms: int | None = None,
        fence: Callable[[], bool] | None = None,
        budget_s: float | None = None,
        trace_id: str = "",
    ) -> OrderResult:
        """Place the order under ``client_order_id`` at most once; see the module doc."""
        order = self._build(
            client_order_id,
            symbol,
            side,
            qty,
            order_type,
            price,
            ref_price,
            stop_price,
            reduce_only,
        )
        started = time.monotonic()
        existing = self.lookup(symbol, order.cid, algo=order.algo)
        if existing is not None:
            log.info(
                kv("EXCHANGE_ORDER_FOUND", {"trace_id": trace_id, "client_order_id": order.cid})
            )
            return OrderResult(order.cid, existing, True, 0, 0, ["found:0"])
        events = ["absent:0"]
        if not_before_ms is not None and self.server_now_ms() <= not_before_ms:
            raise OrderStatusUnknown(
                f"client_order_id={order.cid}: an earlier attempt may still execute until "
                f"server time {not_before_ms}",
                not_before_ms,
            )
        return self._send(order, events, started, fence, budget_s, trace_id)

    def lookup(self, symbol: str, cid: str, *, algo: bool = False) -> dict[str, Any] | None:
        """The order with this client id; None only on -2013. Any other trouble: unknown."""
        for resynced in (False, True):
            try:
                self.server_now_ms()
                if algo:
                    order = self.client.futures_get_algo_order(symbol=symbol, clientAlgoId=cid)
                else:
                    order = self.client.futures_get_order(symbol=symbol, origClientOrderId=cid)
                return dict(order)
            except BinanceAPIException as exc:
                if exc.code == ORDER_NOT_FOUND:
                    return None  # the answer, not an error
                self._told(int(exc.status_code or 0), exc.code)
                if exc.code == TIMESTAMP_OUTSIDE and not resynced:
                    self._resync()
                    continue
                raise OrderStatusUnknown(
                    f"lookup client_order_id={cid}: HTTP {exc.status_code} code={exc.code} "
                    f"{exc.message}"
                ) from exc
            except (requests.RequestException, BinanceRequestException, ExchangeError) as exc:
                if not isinstance(exc, ExchangeError):  # those were told where they happened
                    self._told(None, None)
                raise OrderStatusUnknown(
                    f"lookup client_order_id={cid}: {type(exc).__name__}: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _build(  # noqa: PLR0917 - private, the parts of one order
        self,
        cid: str,
        symbol: str,
        side: str,
        qty: Any,
        order_type: str,
        price: Any,
        ref_price: Any,
        stop_price: Any,
        reduce_only: bool,
    ) -> _Order:
        if not CLIENT_ORDER_ID_RE.fullmatch(cid):
            raise FilterViolation(f"client_order_id={cid!r}: not a valid Binance id")
        otype = order_type.upper()
        bside = _SIDES.get(str(side).upper())
        if bside is None:
            raise FilterViolation(f"side={side!r}: must be BUY/SELL (or LONG/SHORT)")
        dqty = _decimal("qty", qty)
        dprice = None if price is None else _decimal("price", price)
        dref = None if ref_price is None else _decimal("price", ref_price)
        dstop = None if stop_price is None else _decimal("stop_price", stop_price)
        algo = otype in CONDITIONAL_TYPES
        if otype == "LIMIT" and dprice is None:
            raise FilterViolation("price: required for a LIMIT order")
        if algo and dstop is None:
            raise FilterViolation(f"stop_price: required for a {otype} order")
        hedge = self.hedge_mode()
        # In hedge mode there is no reduceOnly flag to earn the exemption; stricter: none.
        self.check(symbol, dqty, dprice, dref or dstop, reduce_only=reduce_only and not hedge)
        params: dict[str, Any] = {
            "symbol": symbol,
            "side": bside,
            "type": otype,
            "quantity": str(dqty),
        }
        if dprice is not None:
            params["price"] = str(dprice)
            if otype == "LIMIT":
                params["timeInForce"] = "GTC"
        if dstop is not None:
            params["triggerPrice"] = str(dstop)
        if hedge:
            # An entry opens the side it buys/sells into; an exit closes the opposite one.
            opens_long = bside == "BUY"
            params["positionSide"] = "LONG" if opens_long != reduce_only else "SHORT"
        elif reduce_only:
            params["reduceOnly"] = "true"
        params["clientAlgoId" if algo else "newClientOrderId"] = cid
        return _Order(cid, symbol, algo, params)

    def _send(  # noqa: PLR0917 - private, called from one place
        self,
        order: _Order,
        events: list[str],
        started: float,
        fence: Callable[[], bool] | None,
        budget_s: float | None,
        trace_id: str,
    ) -> OrderResult:
        rate_limited = 0
        resynced = False
        create = (
            self.client.futures_create_algo_order
            if order.algo
            else self.client.futures_create_order
        )
        for attempt in range(1, self.max_attempts + 1):
            if budget_s is not None and time.monotonic() - started + self.timeout_s > budget_s:
                raise NotSent(
                    f"client_order_id={order.cid}: no time left in the {budget_s}s budget "
                    "for another attempt"
                )
            if fence is not None and not fence():
                raise LeaseLost(f"client_order_id={order.cid}: lease lost before attempt {attempt}")
            self.server_now_ms()
            try:
                placed = create(**order.params)
            except BinanceAPIException as exc:
                status = int(exc.status_code or 0)
                self._told(status, exc.code)
                if status in (418, 429):
                    rate_limited += 1
                    wait = _retry_after(exc, self.max_backoff_s)
                    events.append(f"rate_limited:{status}:{wait}")
                    log.warning(
                        kv(
                            "EXCHANGE_RATE_LIMITED",
                            {"trace_id": trace_id, "status": status, "retry_after_s": wait},
                        )
                    )
                    elapsed = time.monotonic() - started
                    over_budget = (
                        budget_s is not None and elapsed + wait + self.timeout_s > budget_s
                    )
                    if attempt == self.max_attempts or over_budget:
                        raise RateLimited(
                            f"HTTP {status} code={exc.code} retry_after={wait}s", wait
                        ) from exc
                    self.sleep(wait)
                    continue
                if exc.code == TIMESTAMP_OUTSIDE:
                    # Refused on arrival or at the engine: it did not and will not execute.
                    events.append(f"timestamp:{attempt}")
                    if resynced:
                        raise NotSent(f"client_order_id={order.cid}: -1021 after a resync") from exc
                    resynced = True
                    self._resync()
                    continue
                if (
                    exc.code == DUPLICATE_ID
                    or status >= 500
                    or status == 408
                    or exc.code in UNKNOWN_CODES
                ):
                    raise self._unknown(
                        order, f"HTTP {status} code={exc.code} {exc.message}", trace_id
                    ) from exc
                raise OrderRejected(
                    f"HTTP {status} code={exc.code}: {exc.message}", exc.code, status
                ) from exc
            except (requests.RequestException, BinanceRequestException) as exc:
                self._told(None, None)
                raise self._unknown(order, f"{type(exc).__name__}: {exc}", trace_id) from exc
            events.append(f"created:{attempt}")
            return OrderResult(order.cid, dict(placed), False, attempt, rate_limited, events)
        raise NotSent(f"client_order_id={order.cid}: {self.max_attempts} attempts refused")

    def _unknown(self, order: _Order, error: str, trace_id: str) -> OrderStatusUnknown:
        # The request was stamped before this moment: it can execute until now + recvWindow at
        # the latest (server clock); the margin covers the offset's measurement error.
        # No resync here: a network call now could fail and lose the deadline.
        not_before = self._estimate_ms() + self.recv_window_ms + _OFFSET_MARGIN_MS
        log.warning(
            kv(
                "EXCHANGE_STATUS_UNKNOWN",
                {
                    "trace_id": trace_id,
                    "client_order_id": order.cid,
                    "error": error,
                    "not_before_ms": not_before,
                },
            )
        )
        return OrderStatusUnknown(f"client_order_id={order.cid}: {error}", not_before)

    def _told(self, status: int | None, code: Any) -> None:
        if self.on_error is not None:
            self.on_error(status or None, code if isinstance(code, int) else None)

    def _resync(self) -> None:
        try:
            self.sync_time()
        except ExchangeError as exc:
            raise NotSent(f"time sync after -1021 failed: {exc.detail}") from exc

    def _call(self, fn: Callable[[], Any]) -> Any:
        """A read-only call with the same rate-limit handling (safe to repeat)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except BinanceAPIException as exc:
                status = int(exc.status_code or 0)
                self._told(status, exc.code)
                if status in (418, 429) or status >= 500:
                    wait = (
                        _retry_after(exc, self.max_backoff_s)
                        if status in (418, 429)
                        else self.retry_pause_s * attempt
                    )
                    if attempt == self.max_attempts:
                        if status in (418, 429):
                            raise RateLimited(f"HTTP {status} code={exc.code}", wait) from exc
                        raise OrderStatusUnknown(f"HTTP {status}: {exc.message}") from exc
                    self.sleep(wait)
                    continue
                raise OrderStatusUnknown(f"HTTP {status} code={exc.code}: {exc.message}") from exc
            except (requests.RequestException, BinanceRequestException) as exc:
                self._told(None, None)
                if attempt == self.max_attempts:
                    raise OrderStatusUnknown(f"{type(exc).__name__}: {exc}") from exc
                self.sleep(self.retry_pause_s * attempt)
        raise AssertionError("unreachable")  # pragma: no cover


# The offset is measured over one round trip; its error is below half the RTT. 500 ms covers a
# slow loopback or WAN round trip with room to spare.
_OFFSET_MARGIN_MS = 500


def _retry_after(exc: BinanceAPIException, cap: float) -> float:
    raw = None
    response = getattr(exc, "response", None)
    if response is not None:
        raw = response.headers.get("Retry-After")
    try:
        wait = float(raw) if raw is not None else 1.0
    except ValueError:
        wait = 1.0
    return max(0.0, min(wait, cap))


def from_config(config: Any, *, testnet: bool, **kwargs: Any) -> FuturesExchange:
    """An adapter from a ``KernelConfig`` (URL, key, secret, recvWindow, position mode)."""
    return FuturesExchange(
        config.binance_api_key,
        config.binance_api_secret,
        base_url=config.binance_futures_url or None,
        testnet=testnet,
        recv_window_ms=config.binance_recv_window_ms,
        position_mode=config.binance_position_mode,
        **kwargs,
    )
