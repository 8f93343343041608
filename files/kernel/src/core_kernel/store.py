"""Shared gate state in Redis and the atomic ``admit``.

``admit(intent, entry_id=...)`` is one script call (admit.lua). The Python gates judge what needs
no state (``gates.judge``), the script decides the cooldown, rate and intent-age gates on the
Redis server's clock (``TIME``), records the trade when the decision is PASS for an entry, and
stores the decision with its client order id under ``quantum:dedup:order:{trace_id}``
(SET ... EX 86400) - HOLDs too, so a held intent never later becomes an order. A redelivered
intent finds that key and gets its first decision back (``replayed=True``) without recording
again. ``gates.finish`` builds the Decision from the script's outcome; nothing is recomputed.

Corrupted or foreign state is never trusted and never overwritten: a last-trade key that is not
integer milliseconds or a trades key of the wrong type is HOLD STATE_UNAVAILABLE naming the key;
a dedup key holding anything admit did not write is HOLD DUPLICATE_ORDER (someone else claimed
that order).

The operator's trading state (``trading_state``) is read by the same script: every reply starts
with the state it found, a fresh decision carries its hold (bits T / U), and a replayed decision
is held by the current state too (its stored value is left as is), so no order goes out after a
halt has committed - not even one admitted before it and redelivered.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from string import Template
from typing import Any

import redis
from redis.exceptions import NoScriptError

from core_kernel import gates
from core_kernel.config import KernelConfig
from core_kernel.gates import Decision, GateVerdict, Market, Reason, StateOutcome
from core_kernel.inflight import expiry_key, inflight_key, inflight_ttl_ms
from core_kernel.intent import (
    Intent,
    IntentError,
    decode_entry_fields,
    entry_time_ms,
    parse_intent,
)
from core_kernel.log import kv
from core_kernel.mode import ModeReport, TradingMode
from core_kernel.streams import DEDUP_TTL_SECONDS, DEFAULT_PREFIX, load_lua, order_dedup_key
from core_kernel.trading_state import state_key

log = logging.getLogger("core_kernel.gates")

_PASS, _HOLD = GateVerdict.PASS, GateVerdict.HOLD
_STORED = re.compile(
    r"k1\|([PH])\|([0-9]{1,15})\|([0-9]{0,15})\|([0-9]{1,15})\|(C?R?E?K?X?[TU]?)\|([0-9]{0,15})\|"
    r"([\.A-Z\:/a-z0-9_-]{1,36})"
)
_STATE_HOLDS = frozenset({Reason.TRADING_HALTED, Reason.REDUCING_ONLY})
#: The stored bits that are a hold of their own (C R E X are the state outcome's, below).
_BIT_HOLDS = {"T": Reason.TRADING_HALTED, "U": Reason.REDUCING_ONLY, "K": Reason.PRICE_COLLAR}
#: Judged on the exchange's data now; a replay takes them from its stored bits (K, X) instead.
_MARKET_HOLDS = frozenset({Reason.PRICE_COLLAR, Reason.MAX_POSITION})
_NO_TRACE = IntentError({"trace_id": "missing (admit needs it to deduplicate orders)"})


class StateError(Exception):
    """A key the kernel reads holds something it did not write (``key: reason``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def admit_script(params: gates.GateParams) -> str:
    """admit.lua with this config's thresholds compiled in (check-config builds it too)."""
    return Template(load_lua("admit.lua")).substitute(
        min_hold_ms=params.min_hold_seconds * 1000,
        max_trades=params.max_trades,
        window_ms=params.rate_window_seconds * 1000,
        ttl_s=DEDUP_TTL_SECONDS,
        max_age_ms=params.max_intent_age_ms,
    )


class KernelStore:
    """Gate state for one Redis. Thread-safe as far as the redis client is (redis-py's is)."""

    def __init__(
        self,
        client: redis.Redis,
        config: KernelConfig,
        mode: TradingMode | ModeReport,
        key_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.redis = client
        self.config = config
        self.params = config.gate_params()
        self.mode = mode.mode if isinstance(mode, ModeReport) else mode
        self.key_prefix = key_prefix
        self.trades_key = f"{key_prefix}kernel:trades"
        self.state_key = state_key(key_prefix)
        self._last_trade_prefix = f"{key_prefix}kernel:last_trade:"
        self._order_prefix = order_dedup_key("", key_prefix)
        self.inflight_key = inflight_key(key_prefix)
        self.inflight_expiry_key = expiry_key(key_prefix)
        self._inflight_ttl_ms = inflight_ttl_ms(config)
        self._window_ms = self.params.rate_window_seconds * 1000
        self._enforce = self.mode is not TradingMode.LIVE
        # admit calls EVALSHA itself (redis-py's Script adds ~10 us a call on this path) and
        # loads the script again on NOSCRIPT (_reload_admit).
        self._admit_src = admit_script(self.params)
        self._admit_sha = hashlib.sha1(self._admit_src.encode()).hexdigest()  # noqa: S324
        self._limits_on = self.params.market_limits_on
        # The keys every admit passes after its own two (dedup, last trade); the in-flight keys
        # only when the limits that use them are on (admit.lua reads them only then).
        self._static_keys: tuple[str, ...] = (self.trades_key, self.state_key)
        if self._limits_on:
            self._static_keys += (self.inflight_key, self.inflight_expiry_key)
        self._numkeys = str(2 + len(self._static_keys))
        # admit.lua's ARGV[1] = base_ok + 2 * state_gated + 4 * is_entry + 8 * dry, as text:
        # formatted once, indexed by that sum on each call
        self._flags = [str(n) for n in range(16)]
        self._record = client.register_script(load_lua("record_trade.lua"))

    # keys ----------------------------------------------------------------------------------
    def last_trade_key(self, symbol: str) -> str:
        return f"{self._last_trade_prefix}{symbol}"

    def order_key(self, trace_id: str) -> str:
        return order_dedup_key(trace_id, self.key_prefix)

    # time ----------------------------------------------------------------------------------
    def server_time_ms(self) -> int:
        """Redis's clock (``TIME``), the one every gate uses."""
        secs, micros = self.redis.time()
        return int(secs) * 1000 + int(micros) // 1000

    def intent_expired(self, entry_id: str) -> bool:
        """Is the stream entry older than MAX_INTENT_AGE_MS on Redis's clock? (Before a send.)

        An entry id without a millisecond part cannot be dated and counts as expired.
        """
        entry_ms = entry_time_ms(entry_id)
        if entry_ms is None:
            return True
        return self.server_time_ms() - entry_ms > self.params.max_intent_age_ms

    # the decision --------------------------------------------------------------------------
    def evaluate(self, intent: Intent, market: Market | None = None) -> Decision:
        """Decision with the current state, without recording anything (the two-step API)."""
        partial = gates.judge(intent, self.params, self.mode, market)
        return self._run(partial, intent, None, dry=True)

    def admit(
        self, intent: Intent, *, entry_id: str | None = None, market: Market | None = None
    ) -> Decision:
        """All gates plus state plus decision record in one round trip; see the module doc.

        ``entry_id`` (a stream entry's id) dates the intent for MAX_INTENT_AGE_MS; without it
        (CLI, seed API, a direct call) the intent is as old as this call and never expires.
        ``market``: the exchange's data for PRICE_COLLAR / MAX_POSITION (None: none known).
        """
        if intent.trace_id is None:
            return self.log_decision(gates.rejected(_NO_TRACE, self.mode))
        entry_ms: int | None = None
        if entry_id is not None:
            entry_ms = entry_time_ms(entry_id)
            if entry_ms is None:
                error = IntentError({"entry_id": "not a stream entry id"}, intent.trace_id)
                return self.log_decision(gates.rejected(error, self.mode))
        partial = gates.judge(intent, self.params, self.mode, market)
        return self._run(partial, intent, entry_ms, dry=False)

    def admit_mapping(
        self,
        data: Mapping[Any, Any],
        *,
        entry_id: str | None = None,
        market: Market | None = None,
    ) -> Decision:
        """The door for JSON values / keyword arguments: the one parse, then ``admit``."""
        try:
            intent = parse_intent(data, require_trace_id=True)
        except IntentError as exc:
            return self.log_decision(gates.rejected(exc, self.mode))
        return self.admit(intent, entry_id=entry_id, market=market)

    def admit_entry(
        self,
        fields: Mapping[Any, Any],
        entry_id: str,
        market: Callable[[Intent], Market | None] | None = None,
    ) -> tuple[Intent | None, Decision]:
        """The worker's door: a stream entry's fields (bytes) -> (intent or None, decision).

        ``market(intent)`` fetches the exchange's data for the limits that need it.
        """
        try:
            intent = decode_entry_fields(fields)
        except IntentError as exc:
            return None, self.log_decision(gates.rejected(exc, self.mode))
        data = None if market is None else market(intent)
        return intent, self.admit(intent, entry_id=entry_id, market=data)

    def _run(
        self, partial: gates.Partial, intent: Intent, entry_ms: int | None, *, dry: bool
    ) -> Decision:
        trace_id = intent.trace_id
        symbol = intent.symbol
        cid = intent.client_order_id or "-"
        entry = not partial.exit_only
        flags = self._flags[
            partial.passes_without_state(self.mode)
            + 2 * (self._enforce and entry)
            + 4 * entry
            + 8 * dry
        ]
        dedup_key = self._order_prefix + trace_id if trace_id is not None else "-"
        # The whole command as one tuple: EVALSHA, the SHA, numkeys, the keys, then the args.
        command: tuple[str | int, ...] = (
            "EVALSHA",
            self._admit_sha,
            self._numkeys,
            dedup_key,
            self._last_trade_prefix + symbol,
            *self._static_keys,
            flags,
            "" if entry_ms is None else entry_ms,
            f"{symbol}:{trace_id}",
            cid,
        )
        if self._limits_on:
            command += (self._limits_arg(partial),)
        # EVALSHA from here, not through redis.evalsha or a helper: each frame on this path costs
        # several times its warm price when timed next to the server (cache eviction).
        try:
            try:
                reply = self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
            except NoScriptError:
                reply = self._reload_admit(command)
            reply = reply if type(reply) is str else _text(reply)
        except (redis.RedisError, UnicodeDecodeError) as exc:
            return self._unavailable(partial, cid, "redis", f"{type(exc).__name__}: {exc}")
        found, _, reply = reply.partition(";")
        kind = reply[:1]
        # A fresh decision carries the script's own hold (bits T / U); every other reply is held
        # by the state the script found, by the same rule (gates.state_reason).
        self._trading_state(partial, found, not reply.startswith("k1|"))
        if kind == "!":
            key, _, reason = reply[1:].partition("|")
            return self._unavailable(partial, cid, key, reason)
        if kind == "#":
            return self._foreign(partial, dedup_key, cid, reply[1:])
        replayed = kind == "="
        stored = reply[1:] if replayed else reply
        inflight: tuple[int, int] | None = None
        if not replayed and "~" in stored:
            stored, _, tail = stored.partition("~")
            sym, _, gross = tail.partition("|")
            if not (sym.isdigit() and gross.isdigit()):
                return self._unavailable(partial, cid, self.inflight_key, f"reply {tail[:40]!r}")
            inflight = (int(sym), int(gross))
        # The script's own fresh decision ('k1|V|now|since|count|bits|age|cid', cid already
        # checked by client_order_id) is split, not matched; a stored value coming back is
        # matched against the exact form admit writes.
        parts = [] if replayed else stored.split("|")
        if len(parts) == 8 and parts[0] == "k1":
            _k1, verdict, _now, since, count, bits, age, stored_cid = parts
        else:
            match = _STORED.fullmatch(stored)
            if match is None:
                return self._foreign(partial, dedup_key, cid, stored)
            verdict, _now, since, count, bits, age, stored_cid = match.groups()
        # The stored decision's own hold (bits), and for a replay the state's hold now.
        if replayed:
            partial.failed -= _MARKET_HOLDS
        if bits:  # empty for most decisions
            partial.failed.update([_BIT_HOLDS[b] for b in bits if b in _BIT_HOLDS])
        # positional, in StateOutcome's field order: keywords cost ~0.9 us more per call here
        state = StateOutcome(
            "C" in bits,
            "R" in bits,
            "E" in bits,
            int(since) if since else None,
            int(count),
            int(age) if age else None,
            "X" in bits,
            inflight,
        )
        if replayed and partial.failed & _STATE_HOLDS:
            verdict = "H"
        partial.context_cid = None if dry else stored_cid
        decision = gates.finish(
            partial, self.params, self.mode, state, verdict=_PASS if verdict == "P" else _HOLD
        )
        decision.replayed = replayed
        if not dry:
            decision.client_order_id = stored_cid
        return self.log_decision(decision)

    def _reload_admit(self, command: tuple[Any, ...]) -> Any:
        """NOSCRIPT: load admit.lua and send ``command`` again, as redis-py's Script does (a
        restarted or promoted server starts with an empty script cache). The SHA is the one
        computed at start (SHA1 of the same text)."""
        self.redis.script_load(self._admit_src)
        return self.redis.execute_command(*command)  # type: ignore[no-untyped-call]

    def _limits_arg(self, partial: gates.Partial) -> str:
        """admit.lua's input for the limits on exchange data (called only when one is on)."""
        p = self.params
        failed = partial.failed
        held = ("K" if Reason.PRICE_COLLAR in failed else "") + (
            "X" if Reason.MAX_POSITION in failed else ""
        )
        if partial.exposure is None:
            return held + ";"
        pos, gross, add = partial.exposure
        limits = [
            -1 if limit is None else gates.to_micro(limit, up=False)
            for limit in (p.max_position_usd, p.max_gross_exposure_usd)
        ]
        spec = f"{pos}|{gross}|{add}|{limits[0]}|{limits[1]}|{self._inflight_ttl_ms}"
        return f"{held};{spec}"

    def _trading_state(self, partial: gates.Partial, found: str, hold: bool) -> None:
        """Record the state the script found; ``hold``: apply its rule to this intent."""
        if found not in gates.TRADING_STATES:
            partial.ctx["trading_state_error"] = (
                f"{self.state_key}: {found[1:]}"
                if found.startswith("?")
                else f"{self.state_key}: script reply {found[:40]!r}"
            )
            found = "HALTED"
        reason = gates.state_reason(found, partial.exit_only) if hold else None
        gates.apply_trading_state(partial, found, reason)

    def _unavailable(self, partial: gates.Partial, cid: str, key: str, reason: str) -> Decision:
        log.error(
            kv("GATE_STATE_ERROR", {"trace_id": partial.trace_id, "key": key, "error": reason})
        )
        partial.ctx["state_key"] = key
        partial.ctx["state_error"] = reason
        decision = gates.finish(partial, self.params, self.mode, None, unavailable=True)
        decision.client_order_id = cid if partial.trace_id is not None else None
        return self.log_decision(decision)

    def _foreign(self, partial: gates.Partial, key: str, cid: str, stored: str) -> Decision:
        # The key holds something admit did not write (e.g. the old two-step dedup "1"):
        # someone already claimed this order. Never place it again from here.
        partial.failed.add(Reason.DUPLICATE_ORDER)
        partial.ctx["state_key"] = key
        partial.ctx["stored_decision"] = stored[:100]
        decision = gates.finish(partial, self.params, self.mode, None, verdict=_HOLD)
        decision.replayed = True
        decision.client_order_id = cid
        return self.log_decision(decision)

    def log_decision(self, decision: Decision) -> Decision:
        # GATE_AUDIT is a WARNING, the others INFO. With INFO off only a GATE_AUDIT could be
        # written, and log_event gives that to no enforced decision: one level check, most times.
        if not log.isEnabledFor(logging.INFO) and (
            decision.enforced or not log.isEnabledFor(logging.WARNING)
        ):
            return decision
        event = gates.log_event(decision)
        level = logging.WARNING if event == "GATE_AUDIT" else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, kv(event, gates.log_fields(decision)))
        return decision

    # writes --------------------------------------------------------------------------------
    def record_trade(self, symbol: str) -> int:
        """Record a trade on ``symbol`` now (Redis's clock); returns the trades in the window.

        Raises ``StateError`` when a key holds a value the kernel did not write (left as is).
        """
        try:
            count = self._record(
                keys=[self.last_trade_key(symbol), self.trades_key], args=[symbol, self._window_ms]
            )
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith("STATE "):
                key, _, reason = text[6:].partition(": ")
                raise StateError(key, reason) from None
            raise
        return int(count)
