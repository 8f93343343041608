"""The automatic protections' rules (issue 14): pure, Decimal, no I/O; protect.py does the I/O.

* Drawdown: from the high-water mark (HWM = the highest equity seen since the record began or
  the operator's last ``resume``), ``(HWM - equity) / HWM``, in percent. Equity is the
  account's ``totalMarginBalance`` (wallet balance + unrealised PnL, Account Information V2).
* Daily loss: the net of today's ``REALIZED_PNL``, ``COMMISSION`` and ``FUNDING_FEE`` income
  entries (Get Income History) since 00:00 UTC. Fees and funding are what trading costs, so a
  day of many small wins eaten by fees counts as the loss it is; transfers, bonuses and rebates
  are not trading and are left out (a withdrawal is not a loss; it does lower equity, so it can
  trip the drawdown lock - resume after a withdrawal).
* Every trip is at ``>=`` the limit. A trip is recorded once and stays until it is re-armed:
  the daily limit at the UTC day boundary, everything else only by the operator's ``resume``.
* Fail closed: equity unreadable for longer than the staleness bound (``EQUITY_STALE``), an
  answer that is not a usable account (``EQUITY_INVALID``), or any error while deciding
  (``PROTECTION_ERROR``, the catch-all in ``decide``) trips too, always to REDUCING.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

#: Income types that make up the day's realised trading result.
DAILY_INCOME_TYPES = frozenset({"REALIZED_PNL", "COMMISSION", "FUNDING_FEE"})
#: Fail-closed trips always go here, whatever PROTECTION_TRIP_STATE says: they mean "cannot
#: see", not "lost too much".
FAIL_CLOSED_STATE = "REDUCING"
DAY_MS = 86_400_000
# Binance sends balances as plain decimal strings; anything else is not a balance.
_BALANCE = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?")


class Trip(StrEnum):
    DAILY_LOSS_LIMIT = "DAILY_LOSS_LIMIT"
    MAX_DRAWDOWN = "MAX_DRAWDOWN"
    EQUITY_STALE = "EQUITY_STALE"
    EQUITY_INVALID = "EQUITY_INVALID"
    PROTECTION_ERROR = "PROTECTION_ERROR"


@dataclass(frozen=True, slots=True)
class Limits:
    daily_loss_limit_usd: Decimal | None
    max_drawdown_pct: Decimal | None
    trip_state: str  # REDUCING or HALTED, for the two limits
    stale_ms: int

    @property
    def armed(self) -> bool:
        """Either limit set. Neither: nothing to protect, so nothing to fail closed for."""
        return self.daily_loss_limit_usd is not None or self.max_drawdown_pct is not None

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(
            config.daily_loss_limit_usd,
            config.max_drawdown_pct,
            config.protection_trip_state,
            config.protection_stale_seconds * 1000,
        )


@dataclass(frozen=True, slots=True)
class Account:
    wallet: Decimal
    unrealized: Decimal
    equity: Decimal


@dataclass(frozen=True, slots=True)
class ReadOk:
    """What the exchange answered, unvalidated (validating it is part of deciding)."""

    account: Any
    income: Any


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """No answer (timeout, 5xx, refused connection): counts against the staleness bound."""

    error: str


Reading = ReadOk | ReadFailed


@dataclass(frozen=True, slots=True)
class TripRequest:
    code: Trip
    reason: str
    state: str
    day: str


@dataclass(slots=True)
class Outcome:
    """What one poll writes (``fields``/``delete`` on the record), trips, clears, re-arms."""

    fields: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    trips: list[TripRequest] = field(default_factory=list)
    clear: list[Trip] = field(default_factory=list)
    rearm: bool = False
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    epoch: str
    hwm: Decimal | None
    day: str
    last_ok_ms: int | None
    first_fail_ms: int | None
    daily_waived_day: str
    trips: dict[str, dict[str, Any]]


def day_of(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def day_start_ms(now_ms: int) -> int:
    return now_ms - now_ms % DAY_MS


def _balance(data: Mapping[str, Any], name: str) -> Decimal:
    raw = data.get(name)
    if not isinstance(raw, str) or _BALANCE.fullmatch(raw) is None:
        raise ValueError(f"{name}={raw!r}: not a decimal balance")
    return Decimal(raw)


def parse_account(data: Any) -> Account:
    """The balances of an Account Information answer; ValueError naming what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"account: not a JSON object ({type(data).__name__})")
    wallet = _balance(data, "totalWalletBalance")
    upnl = _balance(data, "totalUnrealizedProfit")
    equity = _balance(data, "totalMarginBalance")
    if equity <= 0:
        # No margin left is no account to protect, and a HWM of 0 has no drawdown.
        raise ValueError(f"totalMarginBalance={equity}: not positive")
    return Account(wallet, upnl, equity)


def parse_income(entries: Any, start_ms: int, end_ms: int) -> Decimal:
    """Net of today's trading income entries; ValueError on an entry that is not one."""
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise ValueError("income: not a JSON list")
    total = Decimal(0)
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"income[{n}]: not a JSON object")
        at = entry.get("time")
        if not isinstance(at, int) or isinstance(at, bool):
            raise ValueError(f"income[{n}].time={at!r}: not an integer")
        if not start_ms <= at <= end_ms:
            raise ValueError(f"income[{n}].time={at}: outside the day asked for")
        if entry.get("incomeType") in DAILY_INCOME_TYPES:
            total += _balance(entry, "income")
    return total


def parse_stored(raw: Mapping[str, str]) -> Stored:
    """The persisted record; ValueError on a field the protection did not write."""

    def opt_int(name: str) -> int | None:
        value = raw.get(name)
        if value is None:
            return None
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"record {name}={value!r}: not an integer")
        return int(value)

    hwm: Decimal | None = None
    if "hwm" in raw:
        try:
            hwm = Decimal(raw["hwm"])
        except InvalidOperation:
            raise ValueError(f"record hwm={raw['hwm']!r}: not a number") from None
        if not hwm.is_finite() or hwm <= 0:
            raise ValueError(f"record hwm={raw['hwm']!r}: not a positive number")
    trips: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name.startswith("trip:"):
            try:
                rec = json.loads(value)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                raise ValueError(f"record {name}: not a trip record")
            trips[name[5:]] = rec
    return Stored(
        epoch=raw.get("epoch", "0"),
        hwm=hwm,
        day=raw.get("day", ""),
        last_ok_ms=opt_int("last_ok_ms"),
        first_fail_ms=opt_int("first_fail_ms"),
        daily_waived_day=raw.get("daily_waived_day", ""),
        trips=trips,
    )


def failed(error: str, day: str = "") -> Outcome:
    """The catch-all: any error while deciding trips PROTECTION_ERROR (fail closed)."""
    out = Outcome(error=error)
    out.fields["last_error"] = error[:500]
    out.trips.append(TripRequest(Trip.PROTECTION_ERROR, error[:400], FAIL_CLOSED_STATE, day))
    return out


def decide(raw: Mapping[str, str], reading: Reading, now_ms: int, limits: Limits) -> Outcome:
    """One poll's outcome from the stored record and what was read; never raises."""
    try:
        return _decide(raw, reading, now_ms, limits)
    except Exception as exc:  # fail closed: a calculation error must trip
        return failed(f"{type(exc).__name__}: {exc}")


def _decide(raw: Mapping[str, str], reading: Reading, now_ms: int, limits: Limits) -> Outcome:
    stored = parse_stored(raw)
    day = day_of(now_ms)
    out = Outcome()
    out.figures.update(day=day, at_ms=now_ms)
    if stored.day != day:
        out.fields["day"] = day
    waived = stored.daily_waived_day == day
    if stored.daily_waived_day and not waived:
        out.delete.append("daily_waived_day")
    daily = stored.trips.get(Trip.DAILY_LOSS_LIMIT)
    # The UTC day boundary ends yesterday's daily trip - once a read shows today's figures.
    day_over = daily is not None and daily.get("day") != day

    if isinstance(reading, ReadFailed):
        out.error = reading.error
        out.fields["last_error"] = reading.error[:500]
        if stored.first_fail_ms is None:
            out.fields["first_fail_ms"] = str(now_ms)
        since = stored.last_ok_ms or stored.first_fail_ms or now_ms
        blind_ms = now_ms - since
        out.figures["unreadable_ms"] = blind_ms
        if blind_ms > limits.stale_ms:
            out.trips.append(
                TripRequest(
                    Trip.EQUITY_STALE,
                    f"no equity for {blind_ms // 1000} s (> PROTECTION_STALE_SECONDS="
                    f"{limits.stale_ms // 1000}): {reading.error}"[:400],
                    FAIL_CLOSED_STATE,
                    day,
                )
            )
        return out

    try:
        account = parse_account(reading.account)
        pnl = parse_income(reading.income, day_start_ms(now_ms), now_ms)
    except ValueError as exc:
        out.error = f"invalid answer: {exc}"
        out.fields["last_error"] = out.error[:500]
        if stored.first_fail_ms is None:
            out.fields["first_fail_ms"] = str(now_ms)
        out.trips.append(TripRequest(Trip.EQUITY_INVALID, out.error[:400], FAIL_CLOSED_STATE, day))
        return out

    equity = account.equity
    out.fields.update(
        equity=str(equity),
        wallet=str(account.wallet),
        unrealized=str(account.unrealized),
        last_ok_ms=str(now_ms),
        day_pnl=str(pnl),
    )
    out.delete.extend(["first_fail_ms", "last_error"])
    hwm = stored.hwm
    if hwm is None or equity > hwm:
        hwm = equity
        out.fields.update(hwm=str(equity), hwm_at_ms=str(now_ms))
    drawdown = (hwm - equity) / hwm * 100
    loss = max(-pnl, Decimal(0))
    out.figures.update(
        equity=equity,
        hwm=hwm,
        drawdown_pct=drawdown.quantize(Decimal("0.0001")),
        day_pnl=pnl,
        day_loss=loss,
    )
    if limits.max_drawdown_pct is not None and drawdown >= limits.max_drawdown_pct:
        out.trips.append(
            TripRequest(
                Trip.MAX_DRAWDOWN,
                f"drawdown {drawdown:.2f}% from the high-water mark {hwm} (equity {equity}) "
                f">= MAX_DRAWDOWN_PCT={limits.max_drawdown_pct}",
                limits.trip_state,
                day,
            )
        )
    if limits.daily_loss_limit_usd is not None and loss >= limits.daily_loss_limit_usd:
        if waived:
            out.figures["daily_waived"] = True
        else:
            out.trips.append(
                TripRequest(
                    Trip.DAILY_LOSS_LIMIT,
                    f"realised loss {loss} USD since 00:00 UTC {day} >= "
                    f"DAILY_LOSS_LIMIT_USD={limits.daily_loss_limit_usd}",
                    limits.trip_state,
                    day,
                )
            )
    if day_over:
        out.clear.append(Trip.DAILY_LOSS_LIMIT)
        out.rearm = not any(t.code is Trip.DAILY_LOSS_LIMIT for t in out.trips)
    return out
