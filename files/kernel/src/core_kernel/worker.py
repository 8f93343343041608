"""Reference execution worker (quantum-execution-worker): intent -> admit -> order -> result -> ack.

Exactly once, step by step:

* The consumer name is stable (``EXECUTION_CONSUMER``, default ``<hostname>:quantum-execution``),
  never a PID: a restart reads the same pending-entries list (PEL), and the recovery sweep claims
  stale entries *into* this name. Entries are read as bytes and their delivery counters are only
  moved by real deliveries (``consume``): re-reading the PEL while an order's status is unknown
  never pushes a healthy entry towards the dead-letter stream.
* ``KernelStore.admit_entry`` is the one parse (``intent.decode_entry_fields``) and the one
  decision, stored with its client order id; a redelivered intent replays its first decision.
  Every send and lookup uses ``decision.client_order_id`` and nothing else.
* PASS: the order lease (``lease.OrderLease``: a random per-process token) is taken, the order
  is marked in ``quantum:kernel:order_unknown`` (a hash an operator lists with HGETALL: entry
  id -> trace id, client order id, state, not_before_ms), the adapter looks the id up and sends
  only if the exchange does not know it, renewing the lease before every attempt within a
  budget below the lease. A taken-over entry with no record waits one recvWindow + margin
  first: its previous holder may have a request in flight. An ambiguous send leaves the entry
  pending as ``order_unknown``, resolved by later lookups; it is never acked as failed and never
  dead-lettered. A stored PASS older than MAX_INTENT_AGE_MS is never sent (only looked up).
* HOLD for an entry delivered before: the order is looked up anyway - Redis may have lost the
  PASS that placed it.
* Each entry has its own failure boundary: a malformed entry gets an ``invalid_entry`` result and
  goes to the dead-letter stream with its reason; an unexpected error while handling one entry
  gives a ``failed`` result and a dead letter (or, once an order may have been sent,
  ``order_unknown``). Entries delivered more than MAX_DELIVERIES times are dead-lettered by the
  worker with the reason and the decision - except a PASS, which is resolved by lookup.
* The result is XADDed to ``RESULT_STREAM`` by one Lua script together with ``SET
  quantum:dedup:result:{trace_id} NX EX``, so a crash between result and ack cannot give two
  results; only then XACK.
* At start the worker reads ``appendonly``/``appendfsync`` and logs ``REDIS_DURABILITY`` when a
  Redis restart could lose decisions (``REDIS_DURABILITY=refuse``: it exits 2 instead).
* SIGTERM/SIGINT finish the current intent, then exit 0. With ``NOTIFY_SOCKET`` set, READY=1,
  WATCHDOG=1 and STOPPING=1 are sent (stdlib sd_notify).

Test hooks (the faults the proof injects; not meant for production):
``CORE_KERNEL_FAULT_CRASH_AFTER_ORDER=N`` makes the process ``os._exit(137)`` right after placing
its N-th order, before the result and the ack. ``CORE_KERNEL_FAULT_CLOCK_SKEW_MS=D`` gives the
exchange adapter a wall clock D ms off (the clock every signed request is stamped with).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from core_kernel import consume, inflight, streams
from core_kernel.config import KernelConfig, load_service_config
from core_kernel.exchange import (
    CONDITIONAL_TYPES,
    ExchangeError,
    FilterViolation,
    FuturesExchange,
    NotSent,
    OrderRejected,
    OrderResult,
    OrderStatusUnknown,
    RateLimited,
    from_config,
)
from core_kernel.gates import Decision, GateVerdict, Reason
from core_kernel.intent import Intent
from core_kernel.lease import OrderLease, Taken
from core_kernel.log import kv, setup_logging
from core_kernel.market import MarketData, needs_market
from core_kernel.metrics import WorkerMetrics, serve
from core_kernel.mode import TradingMode, detect_mode
from core_kernel.store import KernelStore
from core_kernel.trading_state import read_state

log = logging.getLogger("core_kernel.worker")

RESULT_DEDUP_PREFIX = "quantum:dedup:result:"
ORDER_UNKNOWN_KEY = consume.ORDER_UNKNOWN_KEY
CRASH_HOOK_ENV = "CORE_KERNEL_FAULT_CRASH_AFTER_ORDER"
SKEW_HOOK_ENV = "CORE_KERNEL_FAULT_CLOCK_SKEW_MS"

# SET NX EX the result key and XADD the result in one script: never one without the other.
_PUBLISH_RESULT_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local fields = {}
  for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  local maxlen = tonumber(ARGV[2])
  if maxlen > 0 then
    return redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
  return redis.call('XADD', KEYS[2], '*', unpack(fields))
end
return false
"""


class Transient(Exception):
    """Leave the entry pending and retry it later."""


# --- systemd notify ---------------------------------------------------------------------------
def sd_notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET`` (no-op without it). Returns True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning(kv("SD_NOTIFY_FAILED", {"error": str(exc)}))
        return False
    return True


# --- results --------------------------------------------------------------------------------
def _result_fields(result: Mapping[str, Any]) -> list[str]:
    fields: list[str] = []
    for name, value in result.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        fields.extend((str(name), text))
    return fields


def publish_result_once(
    client: redis.Redis,
    key: str,
    result: Mapping[str, Any],
    *,
    stream: str = streams.RESULT_STREAM,
    ttl_seconds: int = streams.DEDUP_TTL_SECONDS,
    maxlen: int = 100_000,
) -> str | None:
    """XADD ``result`` unless a result under ``key`` was already published; entry id or None."""
    script = _result_script(client)
    args = [ttl_seconds, maxlen, *_result_fields(result)]
    reply = script(keys=[RESULT_DEDUP_PREFIX + key, stream], args=args)
    return None if reply is None else streams._s(reply)


_RESULT_SCRIPTS: dict[int, Any] = {}


def _result_script(client: redis.Redis) -> Any:
    script = _RESULT_SCRIPTS.get(id(client))
    if script is None:
        script = client.register_script(_PUBLISH_RESULT_LUA)
        _RESULT_SCRIPTS[id(client)] = script
    return script


# --- durability ----------------------------------------------------------------------------
def durability_problem(client: redis.Redis) -> str | None:
    """Why a Redis restart could lose decisions, or None when AOF with fsync always is on."""
    try:
        conf = client.config_get("append*")
    except redis.ResponseError as exc:
        return f"cannot read appendonly/appendfsync (CONFIG GET refused: {exc})"
    appendonly = streams._s(conf.get("appendonly", "?"))
    fsync = streams._s(conf.get("appendfsync", "?"))
    if appendonly != "yes":
        return f"appendonly={appendonly}: a restart loses every decision since the last RDB save"
    if fsync != "always":
        return f"appendfsync={fsync}: a power loss can lose the last second of decisions"
    return None


#: What a worker waits out (with backoff) instead of dying of it
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


# --- the worker -----------------------------------------------------------------------------
@dataclass
class WorkerStats:
    processed: int = 0
    reads: int = 0
    decisions: int = 0
    orders: int = 0
    recovered_orders: int = 0
    holds: int = 0
    failed: int = 0
    rejected: int = 0
    unknown: int = 0
    invalid: int = 0
    dead_lettered: int = 0
    duplicate_results: int = 0
    transient: int = 0
    claimed: int = 0
    exchange_errors: int = 0
    holds_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class _Unknown:
    trace_id: str
    client_order_id: str
    state: str
    not_before_ms: int | None
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, raw: Any) -> _Unknown | None:
        try:
            data = json.loads(raw)
            return cls(
                str(data["trace_id"]),
                str(data["client_order_id"]),
                str(data["state"]),
                None if data.get("not_before_ms") is None else int(data["not_before_ms"]),
                str(data.get("error", "")),
            )
        except (ValueError, TypeError, KeyError):
            return None  # not ours or damaged: act as if there were no record (stricter wait)


class Worker:
    def __init__(
        self,
        client: redis.Redis,
        config: KernelConfig,
        mode: TradingMode,
        exchange: FuturesExchange,
        *,
        consumer: str | None = None,
        block_ms: int = 2000,
        pel_interval_s: float = 1.0,
        batch: int = 10,
        lease: OrderLease | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.redis = client
        self.raw = consume.raw_client(client)
        self.config = config
        self.mode = mode
        self.exchange = exchange
        self.store = KernelStore(client, config, mode)
        self.consumer = consumer or config.consumer_name
        self.block_ms = block_ms
        self.pel_interval_s = pel_interval_s
        self.batch = batch
        self.result_stream = config.result_stream
        self.window_ms = config.binance_recv_window_ms + config.order_lease_margin_ms
        self.lease = lease or OrderLease(
            client, ttl_ms=config.order_lease_ms, min_remaining_ms=self.window_ms
        )
        # Every send, its timeouts and Retry-After waits, fit in what the lease has left after
        # keeping one recvWindow + margin for the last request.
        self.send_budget_s = (self.lease.ttl_ms - self.window_ms) / 1000
        # The exchange's data for PRICE_COLLAR / MAX_POSITION, fetched only when one is on.
        self.market = MarketData(exchange, config) if needs_market(config) else None
        self._inflight_on = inflight.limits_on(config)
        self.stats = WorkerStats()
        self.metrics = metrics
        if metrics is not None:
            exchange.on_error = metrics.exchange_error
        self.stopping = False
        self._run_id: str | None = None
        self._suspect_until = 0.0
        hook = os.environ.get(CRASH_HOOK_ENV, "").strip()
        self._crash_after = int(hook) if hook.isdigit() else 0

    # outcome accounting: one method per event, so instrumentation is one call each --------
    def on_read(self, count: int) -> None:
        self.stats.reads += 1
        if self.metrics is not None:
            self.metrics.read()

    def on_decision(self, decision: Decision) -> None:
        self.stats.decisions += 1
        if self.metrics is not None:
            self.metrics.decision(decision)
        if decision.verdict is GateVerdict.HOLD:
            self.stats.holds += 1
            primary = decision.primary.value
            self.stats.holds_by_reason[primary] = self.stats.holds_by_reason.get(primary, 0) + 1

    def on_order(self, outcome: str, trace_id: str, detail: str = "") -> None:
        """outcome: placed | recovered | rejected | failed | unknown."""
        if outcome == "placed":
            self.stats.orders += 1
        elif outcome == "recovered":
            self.stats.recovered_orders += 1
        elif outcome == "rejected":
            self.stats.rejected += 1
        elif outcome == "unknown":
            self.stats.unknown += 1
        else:
            self.stats.failed += 1
        if self.metrics is not None:
            self.metrics.order(outcome)
        log.info(kv("ORDER_OUTCOME", {"outcome": outcome, "trace_id": trace_id, "detail": detail}))

    def on_exchange_error(self, exc: ExchangeError) -> None:
        self.stats.exchange_errors += 1
        code = getattr(exc, "code", None)
        status = getattr(exc, "status", None)
        log.warning(
            kv(
                "EXCHANGE_ERROR",
                {"reason": exc.reason, "code": code, "status": status, "detail": exc.detail},
            )
        )

    def on_entry(self, outcome: str, entry: consume.StreamEntry, why: str = "") -> None:
        """outcome: handled | dead_lettered | invalid | retry."""
        if outcome == "dead_lettered":
            self.stats.dead_lettered += 1
        elif outcome == "invalid":
            self.stats.invalid += 1
        elif outcome == "retry":
            self.stats.transient += 1
        if self.metrics is not None:
            self.metrics.entry(outcome)
        level = logging.INFO if outcome == "handled" else logging.WARNING
        log.log(level, kv("ENTRY_" + outcome.upper(), {"entry_id": entry.id, "why": why}))

    def on_processed(self, result: Mapping[str, Any]) -> None:
        self.stats.processed += 1
        if self.metrics is not None:
            self.metrics.processed()
        log.info(
            kv(
                "INTENT_DONE",
                {
                    "trace_id": result.get("trace_id"),
                    "entry_id": result.get("entry_id"),
                    "status": result.get("status"),
                    "reasons": result.get("reasons"),
                    "order_id": result.get("order_id"),
                    "recovered": result.get("recovered"),
                },
            )
        )

    # one entry ---------------------------------------------------------------------------
    def handle_contained(self, entry: consume.StreamEntry) -> bool:
        """Handle one entry inside its own failure boundary; True if it was left pending."""
        try:
            self.handle(entry)
        except Transient as exc:
            self.on_entry("retry", entry, str(exc))
            return True
        except _REDIS_DOWN:
            raise  # Redis itself: the loop waits and re-reads the PEL
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc) or "NOSCRIPT" in str(exc):
                raise
            self._contain(entry, exc)
        except Exception as exc:  # the boundary: one entry never stops the rest
            self._contain(entry, exc)
        return False

    def _contain(self, entry: consume.StreamEntry, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.error(kv("ENTRY_FAILED", {"entry_id": entry.id, "error": error}))
        result = {"entry_id": entry.id, "consumer": self.consumer, "status": "failed"}
        result.update(reasons="WORKER_ERROR", error=error)
        self._finish(entry, f"entry:{entry.id}", result, dlq=("failed", {"error": error}))

    def handle(self, entry: consume.StreamEntry) -> None:
        """Process one entry to its result and ack, or raise Transient / a Redis error."""
        if entry.fields is None:
            # Deleted from the stream while pending: nothing to execute; drop it from the PEL.
            consume.ack(self.raw, entry.id)
            self.on_entry("handled", entry, "deleted from the stream")
            return
        started = time.perf_counter()
        intent, decision = self.store.admit_entry(
            entry.fields, entry.id, None if self.market is None else self.market.for_intent
        )
        if self.metrics is not None:
            self.metrics.admit_seconds.observe(time.perf_counter() - started)
        self.on_decision(decision)
        key = decision.trace_id or f"entry:{entry.id}"
        result: dict[str, Any] = {
            "trace_id": decision.trace_id,
            "entry_id": entry.id,
            "consumer": self.consumer,
            "replayed": decision.replayed,
            "mode": decision.mode.value,
            "client_order_id": decision.client_order_id,
        }
        if intent is None:
            error = str(decision.context.get("error") or ",".join(decision.codes))[:500]
            result.update(status="invalid_entry", reasons=",".join(decision.codes), error=error)
            self.on_entry("invalid", entry, error)
            self._finish(entry, key, result, dlq=("invalid_entry", {"error": error}))
            return
        result.update(symbol=intent.symbol, side=intent.side, qty=intent.qty)
        if Reason.STATE_UNAVAILABLE in decision.reasons and not decision.replayed:
            if entry.deliveries > self.config.max_deliveries:
                self._over_limit(entry, key, result, decision)
                return
            raise Transient("gate state unavailable (Redis)")
        cid = decision.client_order_id
        redelivered = entry.deliveries > 1 or decision.replayed or self._suspect()
        if decision.verdict is GateVerdict.HOLD or cid is None:
            found = self._lookup_held(intent, cid) if redelivered and cid else None
            if found is not None:
                # Redis lost the PASS that placed this order: the exchange is the truth.
                result.update(self._placed(found), held_now=",".join(decision.codes))
            elif entry.deliveries > self.config.max_deliveries:
                self._over_limit(entry, key, result, decision)
                return
            else:
                result.update(
                    status="gate_blocked",
                    primary=decision.primary.value,
                    reasons=",".join(decision.codes),
                )
        else:
            result.update(self._execute(entry, intent, cid, redelivered))
        self._finish(entry, key, result)

    def _suspect(self) -> bool:
        """A first delivery that may not be one: Redis may have forgotten an earlier attempt.

        For one recvWindow + margin after Redis came back as another server (new run id:
        restarted, restored from an older snapshot, failed over), an entry's "first" delivery
        may follow a send whose order is not visible yet, so it is treated as redelivered (the
        lookup that permits a send waits one window). Detected on every PEL pass, which is the
        first thing the loop does after a lost connection.
        """
        return time.monotonic() < self._suspect_until

    def _watch_redis(self) -> None:
        run_id = streams._s(self.redis.info("server").get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id:
            log.warning(kv("REDIS_RESTARTED", {"run_id": run_id}))
            self._suspect_until = time.monotonic() + self.window_ms / 1000
        self._run_id = run_id

    def _watch_state(self) -> None:
        if self.metrics is not None:
            self.metrics.state(read_state(self.redis, self.store.key_prefix).state)

    def _over_limit(
        self, entry: consume.StreamEntry, key: str, result: dict[str, Any], decision: Decision
    ) -> None:
        reasons = ",".join(decision.codes)
        result.update(status="dead_lettered", reasons="MAX_DELIVERIES", decision=reasons)
        self._finish(
            entry,
            key,
            result,
            dlq=("max_deliveries", {"verdict": decision.verdict.value, "reasons": reasons}),
        )

    def _finish(
        self,
        entry: consume.StreamEntry,
        key: str,
        result: dict[str, Any],
        *,
        dlq: tuple[str, Mapping[str, str]] | None = None,
    ) -> None:
        result["ts_ms"] = int(time.time() * 1000)
        published = publish_result_once(self.redis, key, result, stream=self.result_stream)
        if published is None:
            self.stats.duplicate_results += 1
            log.info(kv("RESULT_ALREADY_PUBLISHED", {"trace_id": key, "entry_id": entry.id}))
        if dlq is None:
            consume.ack(self.raw, entry.id)
            self.on_entry("handled", entry)
        else:
            consume.dead_letter(
                self.raw,
                entry,
                dlq[0],
                dlq[1],
                dlq=self.config.dead_letter_stream,
            )
            self.on_entry("dead_lettered", entry, dlq[0])
        self._unmark(entry.id)
        if self._inflight_on:
            self._settle_inflight(result)
        cid = result.get("client_order_id")
        if cid:
            self.lease.release(str(cid))
        self.on_processed(result)

    def _settle_inflight(self, result: Mapping[str, Any]) -> None:
        """The outcome is known: release the entry's in-flight record (rule: inflight.py)."""
        trace_id, symbol = result.get("trace_id"), result.get("symbol")
        if not trace_id or not symbol:
            return
        keep: int | None = None
        if result.get("status") == "order_placed":
            if result.get("exchange_status") != "FILLED":
                return  # resting or partly filled: counted until the record expires
            keep = inflight.settle_ms(self.config)
        try:
            store = self.store
            inflight.release(
                self.redis,
                store.inflight_key,
                store.inflight_expiry_key,
                str(symbol),
                str(trace_id),
                keep,
            )
        except redis.RedisError as exc:
            # The record then expires on its own; the result is already published.
            log.warning(kv("INFLIGHT_RELEASE_FAILED", {"trace_id": trace_id, "error": str(exc)}))

    def _lookup_held(self, intent: Intent, cid: str) -> OrderResult | None:
        try:
            order = self.exchange.lookup(
                intent.symbol, cid, algo=intent.order_type in CONDITIONAL_TYPES
            )
        except ExchangeError as exc:
            self.on_exchange_error(exc)
            raise Transient(f"lookup of a held, redelivered intent failed: {exc.detail}") from exc
        return None if order is None else OrderResult(cid, order, True, 0, 0, ["found:0"])

    def _record(self, entry_id: str) -> _Unknown | None:
        raw = self.redis.hget(ORDER_UNKNOWN_KEY, entry_id)
        return None if raw is None else _Unknown.from_json(raw)

    def _mark(self, entry_id: str, record: _Unknown) -> None:
        self.redis.hset(ORDER_UNKNOWN_KEY, entry_id, record.to_json())
        if self.metrics is not None:
            self.metrics.unknown(entry_id, record.state == "unknown")

    def _unmark(self, entry_id: str) -> None:
        self.redis.hdel(ORDER_UNKNOWN_KEY, entry_id)
        if self.metrics is not None:
            self.metrics.unknown(entry_id, False)

    def _execute(
        self, entry: consume.StreamEntry, intent: Intent, cid: str, redelivered: bool
    ) -> dict[str, Any]:
        trace_id = intent.trace_id or ""
        taken = self.lease.acquire(cid)
        if taken is Taken.BUSY:
            raise Transient("order lease held by another process")
        record = self._record(entry.id)
        not_before = record.not_before_ms if record is not None else None
        if record is None and redelivered and taken is Taken.FRESH:
            # A previous holder may have a request in flight: none can execute after one
            # recvWindow (+ margin) from now, so no send before then.
            try:
                not_before = self.exchange.server_now_ms() + self.window_ms
            except ExchangeError as exc:
                self.on_exchange_error(exc)
                raise Transient(f"server time unavailable: {exc.detail}") from exc
        state = record.state if record is not None else "sending"
        self._mark(entry.id, _Unknown(trace_id, cid, state, not_before))
        if self.store.intent_expired(entry.id):
            return self._expired(entry, intent, cid, not_before)
        kwargs: dict[str, Any] = {
            "order_type": intent.order_type,
            "ref_price": intent.price,
            "reduce_only": intent.reduce_only,
            "not_before_ms": not_before,
            "fence": lambda: self.lease.renew(cid),
            "budget_s": self.send_budget_s,
            "trace_id": trace_id,
        }
        if intent.order_type == "LIMIT":
            kwargs["price"] = intent.price
        if intent.stop_price is not None:
            kwargs["stop_price"] = intent.stop_price
        started = time.perf_counter()
        try:
            placed = self.exchange.place_order(
                cid, intent.symbol, intent.side, intent.qty, **kwargs
            )
        except (FilterViolation, OrderRejected) as exc:
            self.on_exchange_error(exc)
            self.on_order("rejected", trace_id, exc.detail)
            out: dict[str, Any] = {"status": "failed", "reasons": exc.reason, "error": exc.detail}
            if isinstance(exc, OrderRejected):
                out.update(exchange_code=exc.code, http_status=exc.status)
            return out
        except OrderStatusUnknown as exc:
            self._unknown(entry, trace_id, cid, exc.not_before_ms or not_before, exc.detail)
            raise Transient(f"order_unknown: {exc.detail}") from exc
        except (NotSent, RateLimited) as exc:
            self.on_exchange_error(exc)
            raise Transient(f"{exc.reason}: {exc.detail}") from exc
        except Exception as exc:
            # Anything unexpected once a send may have started: unknown, never failed.
            deadline = int(time.time() * 1000) + self.window_ms
            self._unknown(entry, trace_id, cid, deadline, f"{type(exc).__name__}: {exc}")
            raise Transient(f"order_unknown: {type(exc).__name__}") from exc
        finally:
            if self.metrics is not None:
                self.metrics.order_seconds.observe(time.perf_counter() - started)
        if not placed.recovered:
            self._maybe_crash()
        self.on_order("recovered" if placed.recovered else "placed", trace_id, placed.order_id)
        return self._placed(placed)

    def _unknown(
        self, entry: consume.StreamEntry, trace_id: str, cid: str, not_before: int | None, why: str
    ) -> None:
        self._mark(entry.id, _Unknown(trace_id, cid, "unknown", not_before, why[:300]))
        self.on_order("unknown", trace_id, why)
        log.warning(
            kv(
                "ORDER_UNKNOWN",
                {"trace_id": trace_id, "client_order_id": cid, "entry_id": entry.id},
            )
        )

    def _expired(
        self, entry: consume.StreamEntry, intent: Intent, cid: str, not_before: int | None
    ) -> dict[str, Any]:
        """A stored PASS past MAX_INTENT_AGE_MS: never sent; an order it placed is reported."""
        found = self._lookup_held(intent, cid)
        if found is not None:
            return self._placed(found)
        if not_before is not None and self.exchange.server_now_ms() <= not_before:
            raise Transient("expired intent: an earlier attempt may still execute")
        return {
            "status": "gate_blocked",
            "primary": Reason.INTENT_EXPIRED.value,
            "reasons": Reason.INTENT_EXPIRED.value,
        }

    def _placed(self, placed: OrderResult) -> dict[str, Any]:
        return {
            "status": "order_placed",
            "order_id": placed.order_id,
            "client_order_id": placed.client_order_id,
            "exchange_status": placed.status,
            "recovered": placed.recovered,
            "attempts": placed.attempts,
            "rate_limited": placed.rate_limited,
        }

    def _maybe_crash(self) -> None:
        if self._crash_after and self.stats.orders + 1 >= self._crash_after:
            # Test hook (see module doc): die between order placement and result/ack.
            log.error(kv("FAULT_HOOK_CRASH", {"orders": self.stats.orders + 1}))
            logging.shutdown()
            os._exit(137)

    # loops ---------------------------------------------------------------------------------
    def _run_entries(self, entries: list[consume.StreamEntry]) -> bool:
        """Handle entries in order; True if any was left pending."""
        left = False
        for entry in entries:
            left = self.handle_contained(entry) or left
            if self.stopping:
                break
        return left

    def prune_unknown(self) -> None:
        """Drop records of entries no longer pending (another process with our name finished
        them while we waited): the hash lists only what is really unsettled."""
        unknown: set[str] = set()
        for entry_id, raw in self.redis.hgetall(ORDER_UNKNOWN_KEY).items():
            rows = self.raw.xpending_range(
                streams.STREAM, streams.GROUP, min=entry_id, max=entry_id, count=1
            )
            if not rows:
                self.redis.hdel(ORDER_UNKNOWN_KEY, entry_id)
                continue
            record = _Unknown.from_json(raw)
            if record is not None and record.state == "unknown":
                unknown.add(streams._s(entry_id))
        if self.metrics is not None:
            # What Redis says, records a previous process left included.
            self.metrics.unknown_now(unknown)

    def drain_own_pending(self, *, count_delivery: bool = False) -> None:
        self.prune_unknown()
        start = "-"
        while not self.stopping:
            entries = consume.read_own_pending(
                self.raw, self.consumer, count=100, start=start, count_delivery=count_delivery
            )
            self.on_read(len(entries))
            if not entries:
                return
            self._run_entries(entries)
            if len(entries) < 100:
                return
            start = "(" + entries[-1].id

    def claim_stale(self) -> None:
        cursor = "0-0"
        claimed = 0
        while not self.stopping:
            cursor, n = consume.claim_stale(
                self.raw, self.consumer, self.config.stale_idle_ms, start=cursor
            )
            claimed += n
            if cursor in ("0-0", "0"):
                break
        if claimed:
            self.stats.claimed += claimed
            log.info(kv("SELF_CLAIMED", {"count": claimed}))
            self.drain_own_pending()

    def check_durability(self) -> bool:
        """Log one line when a Redis restart could lose decisions; False to refuse to start."""
        problem = durability_problem(self.redis)
        if problem is None:
            return True
        refuse = self.config.redis_durability == "refuse"
        log.warning(
            kv(
                "REDIS_DURABILITY",
                {"problem": problem, "action": "refuse" if refuse else "warn"},
            )
        )
        return not refuse

    def _start(self) -> bool:
        """The start-up reads (durability, the group), waiting out a Redis that is down or
        loading the way the main loop does - a worker restarted while Redis restarts must not
        die of it. False: refuse to start (durability), or asked to stop while waiting."""
        backoff = 0.2
        while not self.stopping:
            try:
                if not self.check_durability():
                    return False
                streams.ensure_group(self.redis)
                return True
            except _REDIS_DOWN as exc:
                backoff = self._wait_for_redis(exc, backoff, at="start")
        return False

    def _wait_for_redis(self, exc: Exception, backoff: float, at: str | None = None) -> float:
        """One line, the metric, a pause: Redis is down or loading. Returns the next pause."""
        event, text = streams.redis_down(exc)
        fields: dict[str, object] = {"error": text, "retry_s": backoff}
        if at is not None:
            fields["at"] = at
        log.warning(kv(event, fields))
        if self.metrics is not None:
            self.metrics.redis_down()
        time.sleep(backoff)
        return min(backoff * 2, 5.0)

    def run(self) -> int:
        if not self._start():
            return 0 if self.stopping else 2
        log.info(kv("WORKER_START", {"consumer": self.consumer, "mode": self.mode.value}))
        sd_notify("READY=1")
        next_pel = 0.0
        backoff = 0.2
        first = True
        while not self.stopping:
            try:
                now = time.monotonic()
                if now >= next_pel:
                    self._watch_redis()
                    self._watch_state()
                    # The first read after a start counts: the previous process died holding it.
                    self.drain_own_pending(count_delivery=first)
                    first = False
                    self.claim_stale()
                    next_pel = time.monotonic() + self.pel_interval_s
                sd_notify("WATCHDOG=1")
                if self.stopping:
                    break
                entries = consume.read_new(
                    self.raw, self.consumer, block_ms=self.block_ms, count=self.batch
                )
                self.on_read(len(entries))
                if self._run_entries(entries):
                    next_pel = min(next_pel, time.monotonic() + self.pel_interval_s)
                backoff = 0.2
            except _REDIS_DOWN as exc:
                backoff = self._wait_for_redis(exc, backoff)
                next_pel = 0.0  # something may be half done: read our PEL again first
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # Redis came back without the group (restored from an older snapshot).
                    streams.ensure_group(self.redis)
                    continue
                raise
        sd_notify("STOPPING=1")
        log.info(kv("WORKER_STOP", {"consumer": self.consumer, **_stats_fields(self.stats)}))
        return 0


def _stats_fields(stats: WorkerStats) -> dict[str, object]:
    return {
        "processed": stats.processed,
        "orders": stats.orders,
        "recovered": stats.recovered_orders,
        "holds": stats.holds,
        "failed": stats.failed,
        "rejected": stats.rejected,
        "unknown": stats.unknown,
        "invalid": stats.invalid,
        "dead_lettered": stats.dead_lettered,
        "transient": stats.transient,
        "claimed": stats.claimed,
    }


# --- console entry ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantum-execution-worker",
        description="Reference execution worker: intents -> gates -> Binance order -> result.",
    )
    parser.add_argument("--config", default=None, help="env file (default $CORE_GATES_ENV)")
    parser.add_argument("--consumer", default=None, help="override EXECUTION_CONSUMER")
    parser.add_argument("--block-ms", type=int, default=2000)
    parser.add_argument("--pel-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--exchange-timeout", type=float, default=5.0, help="seconds")
    parser.add_argument("--exchange-attempts", type=int, default=3)
    parser.add_argument("--max-backoff", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--allow-live", action="store_true", help="allow running in LIVE mode (real orders)"
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    # The handler goes in before any set-up: a SIGTERM while the config loads or the exchange
    # client is built must end in a clean exit 0, not death by the signal.
    held: dict[str, Any] = {"worker": None, "stop": False}

    def _stop(signum: int, frame: Any) -> None:
        log.info(kv("WORKER_SIGNAL", {"signal": signal.Signals(signum).name}))
        held["stop"] = True
        if held["worker"] is not None:
            held["worker"].stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    errors: list[str] = []
    config = load_service_config(args.config, sys.stderr)
    if config is None:
        return 2
    mode = detect_mode(config.mode_env()).mode
    if mode is TradingMode.LIVE and not args.allow_live:
        errors.append("TRADING_MODE=LIVE: the reference worker needs --allow-live to place orders")
    if not config.binance_api_key:
        errors.append("BINANCE_API_KEY=: required (orders are signed)")
    if not config.binance_api_secret:
        errors.append("BINANCE_API_SECRET=: required (orders are signed)")
    if args.block_ms < 1:
        errors.append(f"--block-ms={args.block_ms}: must be >= 1")
    window_ms = config.binance_recv_window_ms + config.order_lease_margin_ms
    if (
        args.exchange_timeout <= 0
        or args.exchange_timeout * 1000 >= config.order_lease_ms - window_ms
    ):
        errors.append(
            f"--exchange-timeout={args.exchange_timeout}: must be > 0 and below ORDER_LEASE_MS - "
            f"(BINANCE_RECV_WINDOW_MS + ORDER_LEASE_MARGIN_MS) = "
            f"{config.order_lease_ms - window_ms} ms"
        )
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        return 2
    skew_raw = os.environ.get(SKEW_HOOK_ENV, "").strip()
    skew_s = int(skew_raw) / 1000 if skew_raw.lstrip("-").isdigit() else 0.0
    exchange = from_config(
        config,
        testnet=mode is not TradingMode.LIVE,
        clock=lambda: time.time() + skew_s,
        timeout_s=args.exchange_timeout,
        max_attempts=args.exchange_attempts,
        max_backoff_s=args.max_backoff,
        time_sync_s=config.exchange_time_sync_s,
    )
    # socket_timeout above the block time: redis-py 8's 5 s default would break a long BLOCK.
    client = streams.make_client(
        config,
        socket_timeout=args.block_ms / 1000 + 10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    metrics: WorkerMetrics | None = None
    if config.worker_metrics_listen:
        metrics = WorkerMetrics(mode.value)
        serve(metrics.registry, config.worker_metrics_listen, "execution-worker")
    worker = Worker(
        client,
        config,
        mode,
        exchange,
        consumer=args.consumer,
        block_ms=args.block_ms,
        pel_interval_s=args.pel_interval,
        metrics=metrics,
    )
    held["worker"] = worker
    worker.stopping = bool(held["stop"])
    code = worker.run()
    print(json.dumps({"consumer": worker.consumer, **_stats_fields(worker.stats)}), flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
