"""Binance USD-M Futures adapter on python-binance: one order per trace id, whatever happens.

* ``newClientOrderId`` (``clientAlgoId`` for conditional orders) is ``streams.client_order_id``
  of the trace id, the same on every attempt and in every process.
* A timeout, a dropped connection, a 5xx ("execution status unknown") or -4116 (duplicate id) is
  never answered by sending again blindly: the order is looked up by ``origClientOrderId``
  (``clientAlgoId``) first and an existing order is returned as the result. Only an order the
  exchange says does not exist (-2013) is sent again - with the same id. ``lookup_first=True``
  (a redelivered intent) does that lookup before the first send too: a MARKET order that filled
  is no longer "open", so Binance's own duplicate check would not catch a resend.
* 429/418 back off for ``Retry-After`` (bounded by ``max_backoff_s``), are counted in the result
  and logged ``EXCHANGE_RATE_LIMITED``; after ``max_attempts`` the call raises ``RateLimited``.
* ``exchangeInfo`` filters (tick size, step size, min/max qty, min notional) are checked before
  anything is sent; a violation raises ``FilterViolation`` naming the filter and the numbers.
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

from core_kernel.log import kv
from core_kernel.streams import CLIENT_ORDER_ID_RE, client_order_id

log = logging.getLogger("core_kernel.exchange")

CONDITIONAL_TYPES = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
_SIDES = {"BUY": "BUY", "LONG": "BUY", "SELL": "SELL", "SHORT": "SELL"}
DUPLICATE_ID = -4116
ORDER_NOT_FOUND = -2013


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
    """Could not learn whether the order exists (network down); retry later with the same id."""

    reason = "EXCHANGE_UNKNOWN"


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

    def problems(self, qty: Decimal, price: Decimal | None, ref_price: Decimal | None) -> list[str]:
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
        if ref is not None and qty * ref < self.min_notional:
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


class FuturesExchange:
    """One python-binance client; thread-safe as far as requests' session is (one per worker)."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        base_url: str | None = None,
        testnet: bool = False,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        max_backoff_s: float = 30.0,
        retry_pause_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("BINANCE_API_KEY/BINANCE_API_SECRET: missing (orders are signed)")
        if max_attempts < 1:
            raise ValueError("max_attempts: must be >= 1")
        # ping=False: no network call here; python-binance would ping the spot API otherwise.
        self.client = Client(api_key, api_secret, testnet=testnet and not base_url, ping=False)
        if base_url:
            # Read on every futures call; python-binance has no constructor argument for it.
            self.client.FUTURES_URL = base_url.rstrip("/")
        self.client.REQUEST_TIMEOUT = timeout_s
        self.base_url = base_url or (
            self.client.FUTURES_TESTNET_URL if testnet else self.client.FUTURES_URL
        )
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.retry_pause_s = retry_pause_s
        self.sleep = sleep
        self._filters: dict[str, SymbolFilters] = {}
        self._lock = threading.Lock()

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
        self, symbol: str, qty: Decimal, price: Decimal | None, ref_price: Decimal | None
    ) -> None:
        problems = self.filters(symbol).problems(qty, price, ref_price)
        if problems:
            raise FilterViolation(f"symbol={symbol}: " + "; ".join(problems))

    # orders ---------------------------------------------------------------------------------
    def place_order(
        self,
        trace_id: str,
        symbol: str,
        side: str,
        qty: Any,
        *,
        order_type: str = "MARKET",
        price: Any = None,
        ref_price: Any = None,
        stop_price: Any = None,
        reduce_only: bool = False,
        lookup_first: bool = False,
    ) -> OrderResult:
        """Place the order for ``trace_id`` once; see the module doc for every failure path."""
        cid = client_order_id(trace_id)
        if not CLIENT_ORDER_ID_RE.match(cid):  # client_order_id guarantees it; belt and braces
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
        self.check(symbol, dqty, dprice, dref or dstop)
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
        if reduce_only:
            params["reduceOnly"] = "true"
        params["clientAlgoId" if algo else "newClientOrderId"] = cid
        return self._place(trace_id, cid, symbol, algo, params, lookup_first)

    def lookup(self, symbol: str, cid: str, *, algo: bool = False) -> dict[str, Any] | None:
        """The order with this client id, or None if the exchange says it does not exist."""
        try:
            if algo:
                order = self.client.futures_get_order(symbol=symbol, clientAlgoId=cid)
            else:
                order = self.client.futures_get_order(symbol=symbol, origClientOrderId=cid)
        except BinanceAPIException as exc:
            if exc.code == ORDER_NOT_FOUND:
                return None
            raise
        return dict(order)

    def _place(  # noqa: PLR0917 - private, called from one place
        self,
        trace_id: str,
        cid: str,
        symbol: str,
        algo: bool,
        params: dict[str, Any],
        lookup_first: bool,
    ) -> OrderResult:
        events: list[str] = []
        rate_limited = 0
        must_lookup = lookup_first
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                if must_lookup:
                    existing = self.lookup(symbol, cid, algo=algo)
                    if existing is not None:
                        events.append(f"found:{attempt}")
                        log.info(
                            kv(
                                "EXCHANGE_ORDER_FOUND",
                                {"trace_id": trace_id, "client_order_id": cid, "attempt": attempt},
                            )
                        )
                        return OrderResult(cid, existing, True, attempt, rate_limited, events)
                    events.append(f"absent:{attempt}")
                    must_lookup = False
                order = self.client.futures_create_order(**params)
                events.append(f"created:{attempt}")
                return OrderResult(cid, dict(order), False, attempt, rate_limited, events)
            except BinanceAPIException as exc:
                status = int(exc.status_code or 0)
                if status in (418, 429):
                    rate_limited += 1
                    wait = _retry_after(exc, self.max_backoff_s)
                    events.append(f"rate_limited:{status}:{wait}")
                    last_error = f"HTTP {status} code={exc.code} retry_after={wait}s"
                    log.warning(
                        kv(
                            "EXCHANGE_RATE_LIMITED",
                            {"trace_id": trace_id, "status": status, "retry_after_s": wait},
                        )
                    )
                    if attempt == self.max_attempts:
                        raise RateLimited(last_error, wait) from exc
                    self.sleep(wait)
                    continue
                if exc.code == DUPLICATE_ID or status >= 500:
                    # The order (probably) exists: find it rather than sending again.
                    events.append(f"ambiguous:{status}:{exc.code}")
                    last_error = f"HTTP {status} code={exc.code} {exc.message}"
                    must_lookup = True
                    self._pause(attempt, trace_id, last_error)
                    continue
                raise OrderRejected(
                    f"HTTP {status} code={exc.code}: {exc.message}", exc.code, status
                ) from exc
            except (requests.RequestException, BinanceRequestException) as exc:
                # Timeout, dropped connection, unreadable answer: the status is unknown.
                events.append(f"transport:{type(exc).__name__}")
                last_error = f"{type(exc).__name__}: {exc}"
                must_lookup = True
                self._pause(attempt, trace_id, last_error)
                continue
        raise OrderStatusUnknown(
            f"client_order_id={cid}: status unknown after {self.max_attempts} attempts "
            f"({last_error})"
        )

    def _pause(self, attempt: int, trace_id: str, error: str) -> None:
        log.warning(
            kv("EXCHANGE_RETRY", {"trace_id": trace_id, "attempt": attempt, "error": error})
        )
        if attempt < self.max_attempts:
            self.sleep(min(self.retry_pause_s * attempt, self.max_backoff_s))

    def _call(self, fn: Callable[[], Any]) -> Any:
        """A read-only call with the same rate-limit handling (safe to repeat)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except BinanceAPIException as exc:
                status = int(exc.status_code or 0)
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
                raise OrderRejected(f"HTTP {status} code={exc.code}: {exc.message}") from exc
            except (requests.RequestException, BinanceRequestException) as exc:
                if attempt == self.max_attempts:
                    raise OrderStatusUnknown(f"{type(exc).__name__}: {exc}") from exc
                self.sleep(self.retry_pause_s * attempt)
        raise AssertionError("unreachable")  # pragma: no cover


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
    """An adapter from a ``KernelConfig`` (``BINANCE_FUTURES_URL``, key, secret)."""
    return FuturesExchange(
        config.binance_api_key,
        config.binance_api_secret,
        base_url=config.binance_futures_url or None,
        testnet=testnet,
        **kwargs,
    )
