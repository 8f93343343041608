"""The protections' poller and the operator's resume (issue 14); the rules are protections.py.

One poll: read the record ``quantum:kernel:protection`` (HASH), read the account and today's
income from the exchange, decide (pure), and apply the outcome with protection.lua - the
record, the trip and the state change in one script, the state change audited exactly like an
operator's command (user ``protection:<TRIP>``, the poller's host, source ``protection``).

The record: ``epoch`` (+1 on every write: a poll decided on an older record is decided again),
``hwm``/``hwm_at_ms``, ``equity``/``wallet``/``unrealized``, ``last_ok_ms`` (last successful
read), ``first_fail_ms``/``last_error`` (while reads fail), ``day``/``day_pnl``,
``daily_waived_day`` (``resume --force``), ``resumed_at_ms``, and one ``trip:<TRIP>`` field per
active trip (JSON: reason, at_ms on Redis's clock, day, state, from, to, audit_id).

In LIVE the protections only audit (one ``GATE_AUDIT gate=PROTECTION`` line per would-be trip,
the state and the trips untouched; the figures and the HWM are still kept) unless
PROTECTION_LIVE=true - the gates' audit-only rule. TESTNET and UNKNOWN enforce.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from core_kernel import protections
from core_kernel.exchange import ExchangeError, FuturesExchange
from core_kernel.gates import jsonable
from core_kernel.log import kv
from core_kernel.protections import Limits, Outcome, ReadFailed, Reading, ReadOk
from core_kernel.streams import DEFAULT_PREFIX, load_lua
from core_kernel.trading_state import (
    AUDIT_MAXLEN,
    Change,
    TradingState,
    audit_stream,
    check_reason,
    log_change,
    operator,
    state_key,
)

log = logging.getLogger("core_kernel.protect")

#: Income entries per request (Binance's maximum) and pages per poll; more is an error.
INCOME_PAGE = 1000
MAX_INCOME_PAGES = 10
#: A poll decided on a record an operator changed meanwhile is decided again, this often.
MAX_ATTEMPTS = 3


def protection_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}kernel:protection"


def _keys(prefix: str) -> list[str]:
    return [state_key(prefix), audit_stream(prefix), protection_key(prefix)]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return list(value) if isinstance(value, list) else []


class ResumeRefused(Exception):
    """``resume`` while today's daily-loss trip stands, without ``--force``."""


class Protector:
    def __init__(
        self,
        client: redis.Redis,
        exchange: FuturesExchange,
        limits: Limits,
        *,
        enforce: bool,
        mode: str,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.client = client
        self.exchange = exchange
        self.limits = limits
        self.enforce = enforce
        self.mode = mode
        self.clock = clock
        self.host = host or socket.gethostname()
        self.prefix = prefix
        self.script = client.register_script(load_lua("protection.lua"))

    # reading --------------------------------------------------------------------------------
    def read(self, now_ms: int) -> Reading:
        try:
            account = self.exchange.account()
            income = self._income(protections.day_start_ms(now_ms), now_ms)
        except ExchangeError as exc:
            return ReadFailed(f"{exc.reason}: {exc.detail}")
        return ReadOk(account, income)

    def _income(self, start_ms: int, end_ms: int) -> Any:
        """Today's entries, paged by time (a page is at most INCOME_PAGE entries from its
        ``startTime`` on; entries at the page's last millisecond come again and are skipped)."""
        out: list[Any] = []
        seen: set[tuple[Any, ...]] = set()
        cursor = start_ms
        for _ in range(MAX_INCOME_PAGES):
            page = self.exchange.income(cursor, end_ms, INCOME_PAGE)
            if not isinstance(page, list) or not all(isinstance(e, dict) for e in page):
                return page  # not a list of entries: parse_income names what is wrong
            for entry in page:
                key = (entry.get("incomeType"), entry.get("tranId"), entry.get("time"))
                if key not in seen:
                    seen.add(key)
                    out.append(entry)
            if len(page) < INCOME_PAGE:
                return out
            last = page[-1].get("time")
            if not isinstance(last, int) or last <= cursor:
                raise ValueError(f"income: cannot page past time={last!r}")
            cursor = last
        raise ValueError(f"income: more than {MAX_INCOME_PAGES * INCOME_PAGE} entries today")

    # one poll -------------------------------------------------------------------------------
    def poll(self) -> dict[str, Any]:
        reading: Reading | None = None
        now_ms: int | None = None
        for _attempt in range(MAX_ATTEMPTS):
            raw = {
                _text(k): _text(v)
                for k, v in self.client.hgetall(protection_key(self.prefix)).items()
            }
            try:
                if now_ms is None:
                    now_ms = int(self.clock() * 1000)
                if reading is None:
                    reading = self.read(now_ms)
                outcome = protections.decide(raw, reading, now_ms, self.limits)
            except Exception as exc:  # fail closed: any error while reading trips
                outcome = protections.failed(f"{type(exc).__name__}: {exc}")
            if not self.limits.armed:
                outcome.trips.clear()
            reply = self._apply(raw.get("epoch", "0"), outcome)
            if reply["status"] != "RETRY":
                return self._report(outcome, reply)
        raise redis.RedisError(
            f"{protection_key(self.prefix)}: changed under {MAX_ATTEMPTS} polls in a row"
        )

    def _apply(self, epoch: str, outcome: Outcome) -> dict[str, Any]:
        trips = outcome.trips if self.enforce else []
        args = {
            "epoch": epoch,
            "fields": outcome.fields,
            "delete": outcome.delete,
            "trips": [
                {"code": t.code.value, "reason": t.reason, "state": t.state, "day": t.day}
                for t in trips
            ],
            "clear": [c.value for c in outcome.clear],
            "rearm": outcome.rearm and self.enforce,
            "day": outcome.figures.get("day", ""),
            "host": self.host,
            "maxlen": AUDIT_MAXLEN,
        }
        reply = self.script(keys=_keys(self.prefix), args=["poll", json.dumps(args)])
        data: dict[str, Any] = json.loads(reply)
        return data

    def _report(self, outcome: Outcome, reply: dict[str, Any]) -> dict[str, Any]:
        new = _list(reply.get("new"))
        by_code = {t.code.value: t for t in outcome.trips}
        for code in new:
            log.warning(
                kv(
                    "PROTECTION_TRIP",
                    {
                        "trip": code,
                        "from": reply["from"],
                        "to": reply["to"],
                        "changed": bool(reply["audit_id"]),
                        "audit_id": reply["audit_id"] or None,
                        "host": self.host,
                        "mode": self.mode,
                        "reason": by_code[code].reason if code in by_code else None,
                    },
                )
            )
        if reply["audit_id"]:
            log_change(
                Change(
                    TradingState(reply["from"]),
                    TradingState(reply["to"]),
                    int(reply["at_ms"]),
                    reply["audit_id"],
                ),
                (f"protection:{new[0]}", self.host),
                "protection",
                "; ".join(f"{c}: {by_code[c].reason}" for c in new if c in by_code)[:500],
            )
        if reply.get("rearm_audit_id"):
            log_change(
                Change(
                    TradingState(reply["from"]),
                    TradingState.ACTIVE,
                    int(reply["at_ms"]),
                    reply["rearm_audit_id"],
                ),
                ("protection:DAILY_LOSS_LIMIT", self.host),
                "protection",
                f"DAILY_LOSS_LIMIT re-armed at the UTC day boundary ({outcome.figures.get('day')})",
            )
            log.warning(
                kv(
                    "PROTECTION_REARM",
                    {
                        "trip": "DAILY_LOSS_LIMIT",
                        "to": "ACTIVE",
                        "audit_id": reply["rearm_audit_id"],
                        "day": outcome.figures.get("day"),
                    },
                )
            )
        audit_only = [] if self.enforce else [t.code.value for t in outcome.trips]
        for trip in [] if self.enforce else outcome.trips:
            log.warning(
                kv(
                    "GATE_AUDIT",
                    {
                        "gate": "PROTECTION",
                        "trip": trip.code,
                        "mode": self.mode,
                        "state": reply["to"],
                        "would_be": trip.state,
                        "reason": trip.reason,
                    },
                )
            )
        if outcome.error and not outcome.trips:
            log.warning(kv("PROTECTION_READ_FAILED", {"error": outcome.error}))
        active = sorted(_list(reply.get("active")))
        return {
            **{k: v for k, v in outcome.figures.items()},
            "mode": self.mode,
            "enforce": self.enforce,
            "state": reply["to"],
            "from": reply["from"],
            "changed": bool(reply["audit_id"] or reply.get("rearm_audit_id")),
            "audit_id": reply["audit_id"] or reply.get("rearm_audit_id") or None,
            "new_trips": new,
            "active_trips": active,
            "rearmed": bool(reply.get("rearm_audit_id")),
            "audit_only_trips": audit_only,
            "error": outcome.error,
            "ok": not active and not audit_only and outcome.error is None,
        }


def active_trips(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """The recorded trips, code -> record (for ``core-kernel state``); unreadable ones as text."""
    out: dict[str, Any] = {}
    for name, value in client.hgetall(protection_key(prefix)).items():
        key = _text(name)
        if key.startswith("trip:"):
            try:
                out[key[5:]] = json.loads(_text(value))
            except ValueError:
                out[key[5:]] = _text(value)
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class Resumed:
    change: Change
    cleared: int
    waived: bool


def resume(
    client: redis.Redis,
    reason: str,
    *,
    force: bool = False,
    source: str = "cli",
    prefix: str = DEFAULT_PREFIX,
    who: tuple[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> Resumed:
    """The operator's ``resume``: ACTIVE, every trip cleared and a new high-water mark.

    Refused (``ResumeRefused``) while today's daily-loss trip stands, unless ``force``: the
    loss is still today's and the next poll would trip again; with ``force`` the daily limit
    stays off until the next UTC day boundary.
    """
    reason = check_reason(reason)
    user, host = who or operator()
    today = protections.day_of(int(clock() * 1000))
    script = client.register_script(load_lua("protection.lua"))
    args = {
        "reason": reason,
        "user": user,
        "host": host,
        "source": source,
        "maxlen": AUDIT_MAXLEN,
        "force": force,
        "today": today,
    }
    reply = json.loads(script(keys=_keys(prefix), args=["resume", json.dumps(args)]))
    if reply["status"] == "REFUSED":
        trip = reply.get("trip") or {}
        raise ResumeRefused(
            f"DAILY_LOSS_LIMIT tripped today ({today} UTC): {trip.get('reason', '?')}; it "
            "re-arms at 00:00 UTC, or resume --force to trade on with the daily limit off "
            "until then"
        )
    change = Change(
        TradingState(reply["from"]),
        TradingState(reply["to"]),
        int(reply["at_ms"]),
        reply["audit_id"] or None,
    )
    log_change(change, (user, host), source, reason)
    if reply["cleared"] or reply["waived"]:
        log.warning(
            kv(
                "PROTECTION_RESUME",
                {"cleared": reply["cleared"], "daily_waived": bool(reply["waived"]), "user": user},
            )
        )
    return Resumed(change, int(reply["cleared"]), bool(reply["waived"]))


def _line(data: dict[str, Any]) -> str:
    trips = ",".join(data["active_trips"]) or "-"
    figures = " ".join(
        f"{k}={data[k]}" for k in ("equity", "hwm", "drawdown_pct", "day_loss") if k in data
    )
    extra = f" error={json.dumps(data['error'])}" if data.get("error") else ""
    audit = f" audit_only={','.join(data['audit_only_trips'])}" if data["audit_only_trips"] else ""
    return f"{data['state']} {figures} trips={trips}{audit}{extra}".replace("  ", " ")


def run(
    protector: Protector,
    *,
    once: bool,
    interval_s: float,
    as_json: bool,
    out: TextIO,
    stop: threading.Event | None = None,
) -> int:
    """``core-kernel protect``: exit 0 ok, 1 a trip is active (or would be, audit-only) or the
    read failed; with ``--once`` Redis errors propagate (3/4 in cli.main); in a loop they are
    logged and the next poll tries again, and SIGTERM ends it with 0."""
    stop = stop or threading.Event()
    while True:
        try:
            data = protector.poll()
        except redis.RedisError as exc:
            if once:
                raise
            log.error(kv("PROTECTION_POLL_FAILED", {"error": f"{type(exc).__name__}: {exc}"}))
        else:
            out.write((json.dumps(jsonable(data)) if as_json else _line(data)) + "\n")
            out.flush()
            if once:
                return 0 if data["ok"] else 1
        if stop.wait(interval_s):
            return 0
