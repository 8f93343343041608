"""The exchange's data for the limits that need it (issue 14): PRICE_COLLAR and MAX_POSITION.

The worker asks before an entry's admit, only for the limits that are on:

* mark price: ``futures_mark_price(symbol=...)`` -> ``GET /fapi/v1/premiumIndex`` (weight 1);
* positions: ``futures_position_information()`` -> signed ``GET /fapi/v3/positionRisk``
  (weight 5; only symbols with a position or open orders), stamped with the adapter's
  server-clock offset and recvWindow like every signed request.

Staleness is bounded by MARKET_DATA_MAX_AGE_MS: an answer is reused for that long (monotonic
clock) and never after; a mark price whose own ``time`` is further than that from the
exchange's clock is stale too. One attempt per fetch, no retry (an admit must not wait out
backoffs). Anything else - an error, a timeout, a shape or number that is not Binance's - gives
no value and an ``*_error`` text, so the limit holds (``gates.Market``): never a PASS on
missing data, never an exception out of here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from core_kernel.exchange import ExchangeError, FuturesExchange
from core_kernel.gates import Market
from core_kernel.intent import NUMBER_PATTERN, Intent
from core_kernel.log import kv

log = logging.getLogger("core_kernel.market")

_NUMBER = re.compile(NUMBER_PATTERN)
#: Binance sends prices and notionals as short decimal strings; anything longer or larger is
#: not an answer we trust.
_MAX_TEXT = 40
_MAX_VALUE = Decimal(10) ** 15


class BadData(Exception):
    """An answer that is not in Binance's documented shape."""


def _number(row: Any, name: str, *, positive: bool = False) -> Decimal:
    raw = row.get(name) if isinstance(row, dict) else None
    if not isinstance(raw, str) or len(raw) > _MAX_TEXT or not _NUMBER.fullmatch(raw):
        raise BadData(f"{name}={str(raw)[:40]!r}: not a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise BadData(f"{name}={raw!r}: not a decimal string") from None
    if abs(value) > _MAX_VALUE or (positive and value <= 0):
        raise BadData(f"{name}={raw!r}: out of range")
    return value


def needs_market(config: Any) -> bool:
    return (
        config.price_collar_pct is not None
        or config.max_position_usd is not None
        or config.max_gross_exposure_usd is not None
    )


class MarketData:
    """Fetches and caches what ``gates.Market`` holds; thread-safe."""

    def __init__(
        self,
        exchange: FuturesExchange,
        config: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exchange = exchange
        self.max_age_ms = int(config.market_data_max_age_ms)
        self.want_mark = config.price_collar_pct is not None
        self.want_positions = (
            config.max_position_usd is not None or config.max_gross_exposure_usd is not None
        )
        self.clock = clock
        self._lock = threading.Lock()
        self._marks: dict[str, tuple[float, Decimal]] = {}
        self._positions: tuple[float, dict[str, Decimal]] | None = None

    def for_intent(self, intent: Intent) -> Market | None:
        """The data for one entry's admit; None for an exit (exempt from every limit)."""
        if intent.reduce_only:
            return None
        mark = mark_error = pos = gross = position_error = None
        if self.want_mark:
            try:
                mark = self.mark_price(intent.symbol)
            except Exception as exc:
                mark_error = self._failed("mark_price", intent.symbol, exc)
        if self.want_positions:
            try:
                table = self.positions()
            except Exception as exc:
                position_error = self._failed("positions", intent.symbol, exc)
            else:
                pos = table.get(intent.symbol, Decimal(0))
                gross = sum(table.values(), Decimal(0))
        return Market(mark, pos, gross, mark_error, position_error)

    def _failed(self, what: str, symbol: str, exc: Exception) -> str:
        # A bug here must not stop the worker either: any exception is "unavailable".
        detail = exc.detail if isinstance(exc, ExchangeError) else str(exc)
        text = f"{what} unavailable: {type(exc).__name__}: {detail}"[:300]
        log.warning(kv("MARKET_DATA_UNAVAILABLE", {"what": what, "symbol": symbol, "error": text}))
        return text

    def _fresh(self, fetched: float) -> bool:
        return (self.clock() - fetched) * 1000 <= self.max_age_ms

    # mark price -----------------------------------------------------------------------------
    def mark_price(self, symbol: str) -> Decimal:
        with self._lock:
            cached = self._marks.get(symbol)
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        fetched = self.clock()
        answer = self.exchange.client.futures_mark_price(symbol=symbol)
        if not isinstance(answer, dict) or answer.get("symbol") != symbol:
            raise BadData(f"premiumIndex: not an object for {symbol}")
        mark = _number(answer, "markPrice", positive=True)
        stamp = answer.get("time")
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise BadData(f"premiumIndex time={str(stamp)[:40]!r}: not integer milliseconds")
        age = self.exchange.server_now_ms() - stamp
        if abs(age) > self.max_age_ms:
            raise BadData(
                f"premiumIndex for {symbol} is {age} ms old (MARKET_DATA_MAX_AGE_MS="
                f"{self.max_age_ms})"
            )
        with self._lock:
            self._marks[symbol] = (fetched, mark)
        return mark

    # positions ------------------------------------------------------------------------------
    def positions(self) -> dict[str, Decimal]:
        """Absolute position notional per symbol (both sides summed in hedge mode)."""
        with self._lock:
            cached = self._positions
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        fetched = self.clock()
        self.exchange.server_now_ms()  # the signed request needs the clock offset
        answer = self.exchange.client.futures_position_information()
        if not isinstance(answer, list):
            raise BadData("positionRisk: not a list")
        table: dict[str, Decimal] = {}
        for row in answer:
            symbol = row.get("symbol") if isinstance(row, dict) else None
            if not isinstance(symbol, str) or not symbol:
                raise BadData("positionRisk: a row without a symbol")
            _number(row, "positionAmt")
            notional = abs(_number(row, "notional"))
            table[symbol] = table.get(symbol, Decimal(0)) + notional
        with self._lock:
            self._positions = (fetched, table)
        return table
