"""Shared gate state in Redis and the atomic ``admit``.

``admit(intent)`` is one EVALSHA: it reads the cooldown and rate state, records the trade when
the decision is PASS for an entry, and stores the decision under
``quantum:dedup:order:{trace_id}`` (SET ... EX 86400) - HOLDs too, so a held intent never later
becomes an order. A redelivered intent finds that key and gets its first decision back
(``replayed=True``) without recording again. The verdict itself comes from ``gates.evaluate``;
the script only applies the two state comparisons, the same ones, in integer milliseconds.

The script needs one bit from the Python gates (would the intent pass if the state gates
pass?). When ``prefilter.certify`` can answer it from floats, admit sends the script first and
runs the exact Decimal evaluation while Redis works; the exact answer is still the one used,
and a disagreement fails closed (see ``_filter_disagreed``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from string import Template
from typing import Any

import redis

from core_kernel import gates
from core_kernel.config import KernelConfig
from core_kernel.gates import Decision, GateVerdict, Intent, Reason, Situation
from core_kernel.log import kv
from core_kernel.mode import ModeReport, TradingMode
from core_kernel.prefilter import certify
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

_PASS, _HOLD = GateVerdict.PASS, GateVerdict.HOLD

# Counts fork()s, so a connection made before one is never used after it (cheaper than
# os.getpid(), a system call, on every decision).
_forks = 0


def _forked() -> None:
    global _forks  # noqa: PLW0603 - process-wide by nature
    _forks += 1


os.register_at_fork(after_in_child=_forked)

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
        self._last_trade_prefix = f"{key_prefix}kernel:last_trade:"
        self._window_ms = self.params.rate_window_seconds * 1000
        self._min_hold_ms = self.params.min_hold_seconds * 1000
        self._enforce = self.mode is not TradingMode.LIVE
        # admit calls EVALSHA itself (one less layer per decision); NOSCRIPT reloads it.
        self._admit_src = Template(load_lua("admit.lua")).substitute(
            min_hold_ms=self._min_hold_ms,
            max_trades=self.params.max_trades,
            window_ms=self._window_ms,
            ttl_s=DEDUP_TTL_SECONDS,
        )
        self._admit_sha = hashlib.sha1(self._admit_src.encode()).hexdigest()  # noqa: S324
        pool = client.connection_pool
        self._own_connections = (
            type(client) is redis.Redis
            and client.connection is None
            and type(pool) is redis.ConnectionPool
            and getattr(pool, "cache", None) is None
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._record = _SCRIPTS.get(client, "record_trade.lua")

    # keys ----------------------------------------------------------------------------------
    def last_trade_key(self, symbol: str) -> str:
        return f"{self._last_trade_prefix}{symbol}"

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
        raw_id = intent.trace_id
        trace_id = raw_id if type(raw_id) is str else str(raw_id or "")
        if not trace_id.strip():
            return self._without_trace_id(gates.evaluate_stateless(intent, self.params, self.mode))
        conn = self._connection()
        # With its own connection, admit can send the script as soon as the float filter
        # certifies the one bit the script needs, and judge exactly while Redis works.
        quick = certify(intent, self.params, self.mode) if conn is not None else None
        partial = None
        if quick is None:
            partial = self._judge(intent, trace_id)
            base_ok = partial.passes_without_state(self.mode)
            symbol = partial.ctx.get("symbol") or "-"
            entry = not partial.exit_only
        else:
            base_ok, symbol = quick
            entry = True
        keys_args = (
            self.order_key(trace_id),
            self.last_trade_key(symbol),
            self.trades_key,
            self._now_ms(),
            # the script's flags: base_ok + 2 * state_gated + 4 * is_entry
            (1 if base_ok else 0) + (2 if self._enforce and entry else 0) + (4 if entry else 0),
            f"{symbol}:{trace_id}",
        )
        try:
            reply, partial = self._run_script(
                conn, keys_args, intent=intent, partial=partial, trace_id=trace_id
            )
        except redis.RedisError as exc:
            log.error(
                kv("GATE_STATE_ERROR", {"trace_id": trace_id, "error": f"{type(exc).__name__}"})
            )
            if partial is None:
                partial = self._judge(intent, trace_id)
            decision = gates.finish(partial, Situation.unavailable(), self.params, self.mode)
            _log_decision(decision)
            return decision
        stored = reply if type(reply) is str else _s(reply)
        replayed = stored[:1] == "="
        if replayed:
            stored = stored[1:]
        elif quick is not None and (
            partial.passes_without_state(self.mode) is not base_ok
            or partial.ctx.get("symbol") != symbol
        ):
            stored = self._filter_disagreed(keys_args[0], stored, partial, base_ok)
        decision = self._from_stored(partial, stored, replayed)
        _log_decision(decision)
        return decision

    def _run_script(
        self,
        conn: Any,
        keys_args: tuple[Any, ...],
        *,
        intent: Intent,
        partial: gates.Partial | None,
        trace_id: str,
        reload: bool = True,
    ) -> tuple[Any, gates.Partial]:
        """EVALSHA admit.lua; the exact judgement, if still due, runs while Redis runs it."""
        try:
            if conn is None:
                reply = self.redis.evalsha(self._admit_sha, 3, *keys_args)
                return reply, partial if partial is not None else self._judge(intent, trace_id)
            conn.send_command("EVALSHA", self._admit_sha, 3, *keys_args)
            try:
                if partial is None:
                    partial = self._judge(intent, trace_id)
            except BaseException:
                conn.disconnect()  # the script's reply is still on its way: never reuse it
                raise
            return conn.read_response(), partial
        except redis.exceptions.NoScriptError:
            if not reload:
                raise
            self._admit_sha = self.redis.script_load(self._admit_src)
            return self._run_script(
                conn, keys_args, intent=intent, partial=partial, trace_id=trace_id, reload=False
            )

    def _judge(self, intent: Intent, trace_id: str) -> gates.Partial:
        """The exact stateless evaluation, with the order id the decision will carry."""
        partial = gates.evaluate_stateless(intent, self.params, self.mode)
        partial.ctx["client_order_id"] = client_order_id(trace_id)
        return partial

    def _without_trace_id(self, partial: gates.Partial) -> Decision:
        partial.ctx.setdefault("invalid_fields", {})["trace_id"] = (
            "missing (admit needs it to deduplicate orders)"
        )
        partial.failed.add(Reason.INVALID_INPUT)
        decision = gates.finish(partial, Situation(), self.params, self.mode)
        _log_decision(decision)
        return decision

    def _filter_disagreed(
        self, order_key: str, stored: str, partial: gates.Partial, sent_ok: bool
    ) -> str:
        """The float filter certified what the exact gates reject (never seen; fail closed).

        A PASS the script stored on the filter's word becomes HOLD, so neither this call nor a
        redelivery places the order; a trade it recorded stays in the window, which can only
        hold back later trades, never add one.
        """
        log.error(
            kv(
                "GATE_INCONSISTENT",
                {
                    "stored": stored,
                    "filter": sent_ok,
                    "exact": partial.passes_without_state(self.mode),
                },
            )
        )
        if stored.startswith("P|"):
            stored = "H|" + stored[2:]
            self.redis.set(order_key, stored, xx=True, keepttl=True)
        return stored

    def _connection(self) -> Any:
        """This thread's own connection for admit, or None to use the client's normal path."""
        local = self._local
        if getattr(local, "fork", -1) == _forks:
            return local.conn
        if not self._own_connections:
            return None
        pool = self.redis.connection_pool
        # A child of fork() must not talk over its parent's socket: new process, new connection.
        conn = pool.connection_class(**pool.connection_kwargs)
        local.conn, local.fork = conn, _forks
        with self._lock:
            self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Disconnect the connections admit made (the client's own pool is the caller's)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.disconnect()
        self._local = threading.local()

    def _from_stored(self, partial: gates.Partial, stored: str, replayed: bool) -> Decision:
        try:
            verdict_code, now_ms, last_ms, count = stored.split("|")
            situation = _situation(int(now_ms), int(last_ms) if last_ms else None, int(count))
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
        decision.replayed = replayed
        stored_verdict = _PASS if verdict_code == "P" else _HOLD
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
