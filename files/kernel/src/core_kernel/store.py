"""Shared gate state in Redis and the atomic ``admit``.

``admit(intent)`` is one EVALSHA: it reads the cooldown and rate state, records the trade when
the decision is PASS for an entry, and stores the decision under
``quantum:dedup:order:{trace_id}`` (SET ... EX 86400) - HOLDs too, so a held intent never later
becomes an order. A redelivered intent finds that key and gets its first decision back
(``replayed=True``) without recording again. The verdict itself comes from ``gates.evaluate``;
the script only applies the two state comparisons, the same ones, in integer milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import redis

from core_kernel import gates
from core_kernel.config import KernelConfig
from core_kernel.gates import Decision, GateVerdict, Intent, Reason, Situation
from core_kernel.log import kv
from core_kernel.mode import ModeReport, TradingMode
from core_kernel.streams import (
    _SCRIPTS,
    DEDUP_TTL_SECONDS,
    DEFAULT_PREFIX,
    _s,
    client_order_id,
    load_lua,
    order_dedup_key,
)

log = logging.getLogger("core_kernel.gates")

Clock = Callable[[], float]


class KernelStore:
    """Gate state for one Redis. Thread-safe as far as the redis client is (redis-py's is)."""

    def __init__(
        self,
        client: redis.Redis,
        config: KernelConfig,
        mode: TradingMode | ModeReport,
        clock: Clock = time.time,
        key_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.redis = client
        self.config = config
        self.params = config.gate_params()
        self.mode = mode.mode if isinstance(mode, ModeReport) else mode
        self.clock = clock
        self.key_prefix = key_prefix
        self.trades_key = f"{key_prefix}kernel:trades"
        self._window_ms = self.params.rate_window_seconds * 1000
        self._min_hold_ms = self.params.min_hold_seconds * 1000
        self._enforce = self.mode is not TradingMode.LIVE
        # admit calls EVALSHA itself (one less layer per decision); NOSCRIPT reloads it.
        self._admit_src = load_lua("admit.lua")
        self._admit_sha = hashlib.sha1(self._admit_src.encode()).hexdigest()  # noqa: S324
        self._record = _SCRIPTS.get(client, "record_trade.lua")

    # keys ----------------------------------------------------------------------------------
    def last_trade_key(self, symbol: str) -> str:
        return f"{self.key_prefix}kernel:last_trade:{symbol}"

    def order_key(self, trace_id: str) -> str:
        return order_dedup_key(trace_id, self.key_prefix)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # reads ---------------------------------------------------------------------------------
    def situation(self, symbol: str) -> Situation:
        """Cooldown and rate state now (one pipelined round trip). Raises redis errors."""
        now = self._now_ms()
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.last_trade_key(symbol))
        pipe.zcount(self.trades_key, f"({now - self._window_ms}", "+inf")
        last, count = pipe.execute()
        return _situation(now, None if last is None else int(_s(last)), int(count))

    def evaluate(self, intent: Intent) -> Decision:
        """Decision with the current state, without recording anything (two-step API)."""
        try:
            symbol = gates._text(intent.symbol)
            situation = self.situation(symbol) if symbol else Situation()
        except redis.RedisError as exc:
            log.error(kv("GATE_STATE_ERROR", {"error": f"{type(exc).__name__}: {exc}"}))
            situation = Situation.unavailable()
        decision = gates.evaluate(intent, situation, self.params, self.mode)
        _log_decision(decision)
        return decision

    # writes --------------------------------------------------------------------------------
    def record_trade(self, symbol: str, member: str | None = None) -> int:
        """Record a trade on ``symbol`` now; returns the trades in the window (for logs)."""
        symbol = symbol.strip() if isinstance(symbol, str) else ""
        if not symbol:
            raise ValueError("symbol: missing")
        now = self._now_ms()
        member = member or f"{symbol}:{now}:{uuid.uuid4().hex[:12]}"
        count = self._record(
            keys=[self.last_trade_key(symbol), self.trades_key],
            args=[now, member, now - self._window_ms],
        )
        return int(count)

    def admit(self, intent: Intent) -> Decision:
        """All gates plus state plus decision record in one round trip; see the module doc."""
        partial = gates.evaluate_stateless(intent, self.params, self.mode)
        trace_id = str(intent.trace_id or "")
        if not trace_id.strip():
            partial.ctx.setdefault("invalid_fields", {})["trace_id"] = (
                "missing (admit needs it to deduplicate orders)"
            )
            partial.failed.add(Reason.INVALID_INPUT)
            decision = gates.finish(partial, Situation(), self.params, self.mode)
            _log_decision(decision)
            return decision
        symbol = partial.ctx.get("symbol") or "-"
        entry = not partial.exit_only
        now = self._now_ms()
        args = (
            now,
            self._min_hold_ms,
            self.params.max_trades,
            now - self._window_ms,
            1 if partial.passes_without_state(self.mode) else 0,
            1 if self._enforce and entry else 0,
            1 if entry else 0,
            DEDUP_TTL_SECONDS,
            f"{symbol}:{trace_id}",
        )
        keys = (self.order_key(trace_id), self.last_trade_key(symbol), self.trades_key)
        try:
            try:
                reply = self._evalsha(self._admit_sha, 3, *keys, *args)
            except redis.exceptions.NoScriptError:
                self._admit_sha = self.redis.script_load(self._admit_src)
                reply = self._evalsha(self._admit_sha, 3, *keys, *args)
        except redis.RedisError as exc:
            log.error(
                kv("GATE_STATE_ERROR", {"trace_id": trace_id, "error": f"{type(exc).__name__}"})
            )
            decision = gates.finish(partial, Situation.unavailable(), self.params, self.mode)
            decision.context["client_order_id"] = client_order_id(trace_id)
            _log_decision(decision)
            return decision
        decision = self._from_stored(partial, _s(reply[1]), int(reply[0]) == 1)
        decision.context["client_order_id"] = client_order_id(trace_id)
        _log_decision(decision)
        return decision

    def _evalsha(self, *args: Any) -> Any:
        """EVALSHA on a pooled connection, without redis-py 8's per-command instrumentation.

        ``execute_command`` adds retry bookkeeping, observability hooks and event dispatch
        that cost ~30-40 us per call here - a third of a loopback round trip on the hot path
        of every decision. This does what it does for one command (borrow, send, read,
        disconnect on a connection error, release) but without retries: a failed admit is
        HOLD ``STATE_UNAVAILABLE``, and a redelivery replays the stored decision if the
        script did run. Single-connection clients and client subclasses take the normal path.
        """
        client = self.redis
        if client.connection is not None or type(client) is not redis.Redis:
            return client.evalsha(*args)
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", *args)  # type: ignore[no-untyped-call]
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)

    def _from_stored(self, partial: gates.Partial, stored: str, replayed: bool) -> Decision:
        parts = stored.split("|")
        try:
            verdict_code, now_s, last_s, count_s = parts
            now = int(now_s)
            situation = _situation(now, int(last_s) if last_s else None, int(count_s))
        except ValueError:
            # The key holds something admit did not write (e.g. the old two-step dedup "1"):
            # someone already claimed this order. Never place it again from here.
            partial.failed.add(Reason.DUPLICATE_ORDER)
            partial.ctx["stored_decision"] = stored[:100]
            decision = gates.finish(partial, Situation(), self.params, self.mode)
            decision.verdict = GateVerdict.HOLD
            decision.replayed = True
            return decision
        decision = gates.finish(partial, situation, self.params, self.mode)
        stored_verdict = GateVerdict.PASS if verdict_code == "P" else GateVerdict.HOLD
        decision.replayed = replayed
        if stored_verdict is not decision.verdict:
            # Replayed under a changed config, or a bug: the stored verdict is what was acted on.
            decision.context["recomputed_verdict"] = decision.verdict.value
            if not replayed:
                log.error(kv("GATE_INCONSISTENT", {"stored": stored, "python": decision.verdict}))
            decision.verdict = stored_verdict
        return decision


def _situation(now_ms: int, last_ms: int | None, count: int) -> Situation:
    # Clamped like admit.lua: another worker's clock may have stamped its trade a moment "later".
    since = None if last_ms is None else Decimal(max(0, now_ms - last_ms)).scaleb(-3)
    return Situation(since, count, True)


def _log_decision(decision: Decision) -> None:
    event = gates.log_event(decision)
    level = logging.WARNING if event == "GATE_AUDIT" else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, kv(event, gates.log_fields(decision)))
